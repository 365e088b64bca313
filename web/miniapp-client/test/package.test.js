// The package as a MiniApp developer gets it: `npm pack`, installed from the tarball into an empty
// project, imported by its name from node (issue: "the browser client as a package").
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const PACKAGE_DIR = dirname(dirname(fileURLToPath(import.meta.url)));
const NAME = '@ikiro/miniapp-client';

test('npm pack makes a tarball that installs into an empty project and imports by name', () => {
  const work = mkdtempSync(join(tmpdir(), 'miniapp-client-pack-'));
  try {
    const packed = JSON.parse(
      execFileSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: PACKAGE_DIR, encoding: 'utf8' }),
    )[0];
    assert.deepEqual(
      packed.files.map((/** @type {{path: string}} */ f) => f.path).sort(),
      ['CHANGELOG.md', 'README.md', 'miniapp-client.d.ts', 'miniapp-client.js', 'package.json'],
    );

    const project = join(work, 'project');
    mkdirSync(project);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    execFileSync(
      'npm',
      ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', join(work, packed.filename)],
      { cwd: project, encoding: 'utf8' },
    );

    const script = [
      `import { MiniAppClient, decodeJwtPayload } from '${NAME}';`,
      `import manifest from '${NAME}/package.json' with { type: 'json' };`,
      'console.log(JSON.stringify([typeof MiniAppClient, typeof decodeJwtPayload, manifest.types]));',
    ].join('\n');
    const printed = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: project,
      encoding: 'utf8',
    });
    const [client, decode, types] = JSON.parse(printed);
    assert.equal(client, 'function');
    assert.equal(decode, 'function');
    assert.ok(existsSync(join(project, 'node_modules', NAME, types)), `types file ${types} is installed`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
