'use strict';
// Loads the native addon built by `npm run build` (napi build --platform),
// which writes `js-host-api.<platform>-<arch>[-<abi>].node` next to package.json.

const { existsSync } = require('node:fs');
const { join } = require('node:path');

function candidates() {
  const root = join(__dirname, '..');
  const { platform, arch } = process;
  const names = [];
  if (process.env.HYPERLIGHT_JS_HOST_API_NATIVE) names.push(process.env.HYPERLIGHT_JS_HOST_API_NATIVE);
  if (platform === 'linux') {
    const musl = isMusl();
    names.push(join(root, `js-host-api.linux-${arch}-${musl ? 'musl' : 'gnu'}.node`));
  } else if (platform === 'win32') {
    names.push(join(root, `js-host-api.win32-${arch}-msvc.node`));
  } else {
    names.push(join(root, `js-host-api.${platform}-${arch}.node`));
  }
  names.push(join(root, 'js-host-api.node'));
  return names;
}

function isMusl() {
  try {
    const report = process.report && process.report.getReport();
    const header = report && (typeof report === 'string' ? JSON.parse(report) : report).header;
    return !(header && header.glibcVersionRuntime);
  } catch {
    return false;
  }
}

function load() {
  const tried = [];
  for (const file of candidates()) {
    if (!existsSync(file)) {
      tried.push(`${file} (missing)`);
      continue;
    }
    return require(file);
  }
  const err = new Error(
    '@hyperlight/js-host-api: the native addon is not built for ' +
      `${process.platform}-${process.arch}. Run \`npm run build\` in the package directory. Tried:\n  ` +
      tried.join('\n  ')
  );
  err.code = 'ERR_INTERNAL';
  throw err;
}

module.exports = load();
