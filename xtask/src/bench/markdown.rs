//! The Markdown page of a run: machine, method, one table per workload and
//! cipher, ratios, and the workloads where spliceTo lost, with counts.

use std::fmt::Write as _;

use super::report::{
    cpu_unit, format_figure, format_spread, throughput_unit, Profile, Results, Row,
};
use super::workloads::PERF_EVENTS;
use super::{Variant, Workload, FIXED_RATE_SHARE};

/// Returns the whole page.
pub fn page(results: &Results) -> String {
    let mut page = String::new();
    header(&mut page, results);
    method(&mut page, results);
    tables(&mut page, results);
    losses(&mut page, results);
    page
}

fn header(page: &mut String, results: &Results) {
    let machine = &results.machine;
    let _ = writeln!(
        page,
        "# Benchmarks: spliceTo against JavaScript pumps, socat and C\n"
    );
    let _ = writeln!(
        page,
        "This page is written by `cargo xtask bench`; edit the xtask, not the page. \
         The numbers below come from one run of\n\n```sh\n{}\n```\n\non {}{}.\n",
        machine.command,
        machine.date,
        if results.settings.quick {
            ", a quick run with small sizes and few repetitions: a smoke check, not a record"
        } else {
            ""
        }
    );
    let _ = writeln!(page, "## Machine and placement\n");
    let _ = writeln!(
        page,
        "- CPU: {}, {} CPUs (from /proc/cpuinfo).",
        machine.cpu_model, machine.cpus
    );
    let _ = writeln!(page, "- Linux {}.", machine.kernel);
    let _ = writeln!(
        page,
        "- node {} (the patched build; the TLS peer runs on the same binary).",
        machine.node
    );
    let _ = writeln!(
        page,
        "- {}, and the C forwarder, linked against the system's {}.",
        machine.socat, machine.system_openssl
    );
    let _ = writeln!(page, "- Placement: {}.\n", results.placement);
}

fn method(page: &mut String, results: &Results) {
    let settings = &results.settings;
    let _ = writeln!(page, "## Method\n");
    let _ = writeln!(
        page,
        "Each measurement starts a TLS peer (a node script, TLS 1.3 server on 127.0.0.1, \
         offering only the cipher suite named in the table) and one forwarder process. \
         The forwarder connects to the peer and moves the cleartext to or from its fd 3, \
         whose other end belongs to the xtask. The variants:\n"
    );
    let _ = writeln!(page, "| variant | forwarder |\n| --- | --- |");
    let descriptions = [
        (Variant::Splice, "`tlsSocket.spliceTo({ fd: 3, direction, framing })`: the native pump"),
        (Variant::Pipe, "`tlsSocket.pipe(fdStream)` or `fdStream.pipe(tlsSocket)`"),
        (Variant::Pipeline, "`stream.pipeline()` between the same streams"),
        (Variant::Data, "a hand-written pump: `'data'`, `write()` and `'drain'`"),
        (
            Variant::Socat,
            "`socat -b 65536 OPENSSL:127.0.0.1:PORT,verify=0,nodelay FD:3`, with `-u` or `-U` for one direction",
        ),
        (
            Variant::C,
            "a minimal C forwarder written for this benchmark (`xtask/bench/forward.c`): \
             `poll()`, `SSL_read`/`write` and `read`/`SSL_write` on blocking fds",
        ),
    ];
    for (variant, description) in descriptions {
        let _ = writeln!(page, "| {} | {description} |", variant.label());
    }
    let _ = writeln!(page);
    let bullets = [
        format!(
            "W1 and W2 move {} MiB per run through a pipe, which a pinned xtask thread drains \
             (W1) or fills (W2). The JavaScript variants wrap the pipe in a `net.Socket`.",
            settings.stream_bytes >> 20
        ),
        format!(
            "W3 sends {} packets of {} bytes each way at once, as fast as they go, over a \
             `SOCK_SEQPACKET` socketpair; packets/s counts both directions. spliceTo and the C \
             loop use `length16` framing, as the peer does. `net.Socket` cannot wrap a packet \
             fd, so the JavaScript variants read and write it with `fs.read()`/`fs.write()` on \
             the thread pool, one packet per call, and add and strip the lengths themselves. \
             socat cannot frame packets: for socat the peer sends bare packets, and socat \
             writes each `SSL_read` result as one datagram, so its datagrams may hold several \
             packets or parts of them and its packets are counted by bytes.",
            settings.packets, settings.packet_size
        ),
        format!(
            "W3 over a TUN device sends the same {} packets each way through a real TUN device \
             (`IFF_TUN | IFF_NO_PI`, address 10.77.0.1/24, IPv6 disabled) in a network \
             namespace that the xtask creates for the measurement; the peer and the forwarder \
             run in that namespace and talk over its loopback device. Every variant uses \
             `framing: 'ip'`: the TLS stream carries bare IPv4 packets, cut by the total length \
             in their headers. A pinned xtask thread sends {}-byte UDP payloads from 10.77.0.1 \
             to 10.77.0.2, which the kernel routes into the device as {}-byte IPv4 packets, and \
             the peer sends {}-byte IPv4/UDP packets to 10.77.0.1, which the kernel delivers \
             from the device to a UDP socket that another pinned thread reads. The JavaScript \
             variants read and write the device with `fs.read()`/`fs.write()`, one packet per \
             call, and the C loop reads it non-blocking. A TUN device has no EOF, so the \
             fd -> TLS direction ends when the peer ends the session (spliceTo with `stop()`). \
             socat is left out: it cannot cut the TLS stream into packets, and each write to a \
             TUN device is taken as one IP packet, so socat's writes of whole `SSL_read` \
             results would make malformed packets. CPU per packet subtracts the \
             socketpair's zero-length transfer, because the xtask, not the forwarder, sets up \
             the device.",
            settings.packets,
            // 20 bytes of IPv4 header and 8 of UDP header.
            settings.packet_size - 28,
            settings.packet_size,
            settings.packet_size
        ),
        format!(
            "W4 is W3 at {} packets/s each way for {} s, to compare CPU and event-loop \
             utilization at equal work. The rate is {:.0}% of the slowest variant's median W3 \
             rate in the same run, so it is well below every variant's maximum.",
            settings.fixed_rate,
            settings.fixed_rate_seconds,
            FIXED_RATE_SHARE * 100.0
        ),
        format!(
            "W5: the forwarder writes into a pipe that nobody reads while the peer offers \
             {} MiB. RSS growth is the forwarder's VmHWM after {} s minus its VmRSS 250 ms \
             after the handshake, before the peer sends. The peer counts as blocked when its \
             TLS socket passed on no more bytes during the second half of that time.",
            settings.stall_offer >> 20,
            settings.stall_seconds
        ),
        format!(
            "Each figure is the median of {} runs, with the range in brackets. Within a run \
             every variant is measured once, and the order of the variants rotates from run to \
             run.",
            settings.runs
        ),
        format!(
            "CPU is the forwarder process's user + system time from `wait4`, minus the median \
             of {} zero-length transfers of the same variant and cipher (process start, \
             handshake and exit), per GB (10^9 bytes) or per packet. Throughput runs from the \
             end of the handshake at the peer to the last byte or packet at its receiver. MB \
             means 10^6 bytes.",
            settings.startup_runs
        ),
        "ELU is `performance.eventLoopUtilization()` in the node forwarder, from the \
         handshake to the end of the pump. The native pump runs on the event-loop thread, so \
         its work counts as busy time."
            .to_string(),
        "Peak RSS is the forwarder's `ru_maxrss`.".to_string(),
        "Ratios divide a variant's figure by the figure of the reference variant in the same \
         run and give the median and range of those per-run ratios. The best JavaScript pump \
         is the one with the highest median throughput (W1 to W3) or the lowest median CPU \
         per packet (W4). A throughput ratio above 1 and a CPU ratio below 1 favor the \
         variant."
            .to_string(),
    ];
    for bullet in bullets {
        let _ = writeln!(page, "- {bullet}");
    }
    let _ = writeln!(page);
}

fn tables(page: &mut String, results: &Results) {
    let _ = writeln!(page, "## Results\n");
    let mut configs: Vec<_> = results
        .rows
        .iter()
        .map(|row| (row.workload, row.cipher))
        .collect();
    configs.dedup();
    for (workload, cipher) in configs {
        let rows: Vec<&Row> = results
            .rows
            .iter()
            .filter(|row| row.workload == workload && row.cipher == cipher)
            .collect();
        let _ = writeln!(page, "### {}, {}\n", workload.title(), cipher.suite());
        if workload == Workload::W5 {
            stall_table(page, &rows);
        } else {
            figure_table(page, workload, &rows);
            ratio_table(page, workload, &rows);
        }
        if workload == Workload::W2 && !page.contains("](benchmarks.svg)") {
            let _ = writeln!(
                page,
                "![MB/s and CPU s/GB per variant in W1 and W2, medians with min-max \
                 whiskers](benchmarks.svg)\n"
            );
        }
    }
}

fn figure_table(page: &mut String, workload: Workload, rows: &[&Row]) {
    let _ = writeln!(
        page,
        "| variant | {} | {} | ELU | peak RSS MiB |\n| --- | --- | --- | --- | --- |",
        throughput_unit(workload),
        cpu_unit(workload)
    );
    for row in rows {
        let _ = writeln!(
            page,
            "| {} | {} | {} | {} | {} |",
            row.variant.label(),
            format_spread(row.throughput),
            format_spread(row.cpu_per_unit),
            format_spread(row.elu),
            format_spread(row.peak_rss_mib)
        );
    }
    let _ = writeln!(page);
}

fn ratio_table(page: &mut String, workload: Workload, rows: &[&Row]) {
    let best_js = rows
        .iter()
        .find_map(|row| row.vs_best_js.as_ref().map(|ratios| ratios.against));
    let Some(best_js) = best_js else {
        return;
    };
    let throughput = throughput_unit(workload);
    // Workloads that socat cannot run have no socat columns.
    let with_socat = rows.iter().any(|row| row.vs_socat.is_some());
    if !with_socat {
        best_js_ratio_table(page, best_js, throughput, rows);
        return;
    }
    let _ = writeln!(
        page,
        "Ratios against the best JavaScript pump, {}, and against socat, per run:\n",
        best_js.label()
    );
    let _ = writeln!(
        page,
        "| variant | {throughput} ÷ best JS | CPU ÷ best JS | {throughput} ÷ socat | CPU ÷ socat |\n\
         | --- | --- | --- | --- | --- |"
    );
    for row in rows {
        let (best_throughput, best_cpu) = match &row.vs_best_js {
            Some(ratios) => (format_spread(ratios.throughput), format_spread(ratios.cpu)),
            None => ("–".to_string(), "–".to_string()),
        };
        let (socat_throughput, socat_cpu) = match &row.vs_socat {
            Some(ratios) => (format_spread(ratios.throughput), format_spread(ratios.cpu)),
            None => ("–".to_string(), "–".to_string()),
        };
        let _ = writeln!(
            page,
            "| {} | {best_throughput} | {best_cpu} | {socat_throughput} | {socat_cpu} |",
            row.variant.label()
        );
    }
    let _ = writeln!(page);
}

fn best_js_ratio_table(page: &mut String, best_js: Variant, throughput: &str, rows: &[&Row]) {
    let _ = writeln!(
        page,
        "Ratios against the best JavaScript pump, {}, per run:\n",
        best_js.label()
    );
    let _ = writeln!(
        page,
        "| variant | {throughput} ÷ best JS | CPU ÷ best JS |\n| --- | --- | --- |"
    );
    for row in rows {
        let (best_throughput, best_cpu) = match &row.vs_best_js {
            Some(ratios) => (format_spread(ratios.throughput), format_spread(ratios.cpu)),
            None => ("–".to_string(), "–".to_string()),
        };
        let _ = writeln!(
            page,
            "| {} | {best_throughput} | {best_cpu} |",
            row.variant.label()
        );
    }
    let _ = writeln!(page);
}

fn stall_table(page: &mut String, rows: &[&Row]) {
    let _ = writeln!(
        page,
        "| variant | RSS growth MiB | peer blocked | MiB the peer passed on | peak RSS MiB |\n\
         | --- | --- | --- | --- | --- |"
    );
    for row in rows {
        let blocked = match row.peer_blocked_runs {
            Some(blocked) => format!("{blocked} of {} runs", row.runs),
            None => "–".to_string(),
        };
        let _ = writeln!(
            page,
            "| {} | {} | {blocked} | {} | {} |",
            row.variant.label(),
            format_spread(row.rss_growth_mib),
            format_spread(row.peer_accepted_mib),
            format_spread(row.peak_rss_mib)
        );
    }
    let _ = writeln!(
        page,
        "\nWhat the peer passed on sits in the kernel's socket buffers, the forwarder and \
         the pipe.\n"
    );
}

fn losses(page: &mut String, results: &Results) {
    let _ = writeln!(
        page,
        "## Where spliceTo does not beat the best JavaScript pump\n"
    );
    if results.losses.is_empty() {
        let _ = writeln!(
            page,
            "Nowhere in this run: spliceTo's median beat the best JavaScript pump's on every \
             figure of every workload."
        );
        return;
    }
    for loss in &results.losses {
        let _ = writeln!(
            page,
            "- {}, {}: {}.",
            loss.workload.title(),
            loss.cipher.suite(),
            loss.figures.join("; ")
        );
    }
    let _ = writeln!(page);
    let mut profiled: Vec<_> = results
        .profiles
        .iter()
        .map(|profile| (profile.workload, profile.cipher))
        .collect();
    profiled.dedup();
    if profiled.is_empty() {
        let _ = writeln!(
            page,
            "perf was not available, so this run has no counts that explain the losses."
        );
        return;
    }
    let _ = writeln!(
        page,
        "For each of these workloads, spliceTo and the best JavaScript pump ran once more \
         under `perf stat -e {PERF_EVENTS}`. The counts cover the whole forwarder process, \
         start-up included, divided by the units moved:\n"
    );
    for (workload, cipher) in profiled {
        let pair: Vec<&Profile> = results
            .profiles
            .iter()
            .filter(|profile| profile.workload == workload && profile.cipher == cipher)
            .collect();
        profile_table(page, workload, &pair);
    }
}

fn profile_table(page: &mut String, workload: Workload, profiles: &[&Profile]) {
    let unit = match workload {
        Workload::W1 | Workload::W2 => "per MB",
        Workload::W3 | Workload::W3Tun | Workload::W4 => "per packet",
        Workload::W5 => "per run",
    };
    let divisor = |profile: &Profile| -> f64 {
        match workload {
            Workload::W1 | Workload::W2 => profile.amount as f64 / 1e6,
            Workload::W3 | Workload::W3Tun | Workload::W4 => profile.amount as f64,
            Workload::W5 => 1.0,
        }
        .max(1e-9)
    };

    let _ = write!(page, "{} ({unit}):\n\n| event |", workload.title());
    for profile in profiles {
        let _ = write!(page, " {} |", profile.variant.label());
    }
    let _ = write!(page, "\n| --- |");
    for _ in profiles {
        let _ = write!(page, " --- |");
    }
    let _ = writeln!(page);

    let mut events: Vec<&String> = profiles
        .iter()
        .flat_map(|profile| profile.counts.keys())
        .collect();
    events.sort();
    events.dedup();
    for event in events {
        let _ = write!(page, "| {event} |");
        for profile in profiles {
            match profile.counts.get(event) {
                Some(count) => {
                    let _ = write!(page, " {} |", format_figure(count / divisor(profile)));
                }
                None => {
                    let _ = write!(page, " – |");
                }
            }
        }
        let _ = writeln!(page);
    }
    let _ = writeln!(page);
}
