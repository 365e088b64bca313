import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { mergePatch } from '../miniapp-client.js';

describe('mergePatch (RFC 7396)', () => {
  // Appendix A of RFC 7396, every row.
  const appendixA = [
    [{ a: 'b' }, { a: 'c' }, { a: 'c' }],
    [{ a: 'b' }, { b: 'c' }, { a: 'b', b: 'c' }],
    [{ a: 'b' }, { a: null }, {}],
    [{ a: 'b', b: 'c' }, { a: null }, { b: 'c' }],
    [{ a: ['b'] }, { a: 'c' }, { a: 'c' }],
    [{ a: 'c' }, { a: ['b'] }, { a: ['b'] }],
    [{ a: { b: 'c' } }, { a: { b: 'd', c: null } }, { a: { b: 'd' } }],
    [{ a: [{ b: 'c' }] }, { a: [1] }, { a: [1] }],
    [['a', 'b'], ['c', 'd'], ['c', 'd']],
    [{ a: 'b' }, ['c'], ['c']],
    [{ a: 'foo' }, null, null],
    [{ a: 'foo' }, 'bar', 'bar'],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: 'b', c: null }, { a: 'b' }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ];
  for (const [target, patch, expected] of appendixA) {
    test(`${JSON.stringify(target)} + ${JSON.stringify(patch)} = ${JSON.stringify(expected)}`, () => {
      assert.deepEqual(mergePatch(target, patch), expected);
    });
  }

  test('the section 3 example: nested null removes, arrays replace, new keys add', () => {
    const target = {
      title: 'Goodbye!',
      author: { givenName: 'John', familyName: 'Doe' },
      tags: ['example', 'sample'],
      content: 'This will be unchanged',
    };
    const patch = { title: 'Hello!', phoneNumber: '+01-123-456-7890', author: { familyName: null }, tags: ['example'] };
    assert.deepEqual(mergePatch(target, patch), {
      title: 'Hello!',
      author: { givenName: 'John' },
      tags: ['example'],
      content: 'This will be unchanged',
      phoneNumber: '+01-123-456-7890',
    });
  });

  test('neither the target nor the patch is modified; untouched branches are shared', () => {
    const target = { keep: { deep: [1] }, change: { x: 1, y: 2 } };
    const patch = { change: { y: null, z: 3 } };
    const before = structuredClone(target);
    const patchBefore = structuredClone(patch);
    const result = mergePatch(target, patch);
    assert.deepEqual(target, before);
    assert.deepEqual(patch, patchBefore);
    assert.equal(result.keep, target.keep);
    assert.deepEqual(result.change, { x: 1, z: 3 });
  });

  test('a "__proto__" key is an ordinary own property, not a prototype change', () => {
    const patch = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}');
    const result = mergePatch({}, patch);
    assert.equal(Object.getPrototypeOf(result), Object.prototype);
    assert.equal(result.polluted, undefined);
    assert.deepEqual(Object.keys(result).sort(), ['__proto__', 'a']);
    assert.equal(({}).polluted, undefined);
  });
});
