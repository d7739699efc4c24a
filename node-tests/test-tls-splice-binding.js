// Flags: --expose-internals
'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');

// The native splice library is linked into node: the tls_wrap binding
// reports the library's version, read through a call into the library.

const assert = require('assert');
const { internalBinding } = require('internal/test/binding');

const { spliceVersion } = internalBinding('tls_wrap');
assert.strictEqual(typeof spliceVersion, 'string');
assert.match(spliceVersion, /^\d+\.\d+\.\d+$/);
