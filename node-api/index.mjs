// ES module entry of @hyperlight/js-host-api: the same classes as index.js,
// as static named exports (so `import { SandboxBuilder } from ...` works).
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const api = require('./index.js');

export const SandboxBuilder = api.SandboxBuilder;
export const ProtoJSSandbox = api.ProtoJSSandbox;
export const JSSandbox = api.JSSandbox;
export const LoadedJSSandbox = api.LoadedJSSandbox;
export const InterruptHandle = api.InterruptHandle;
export const Snapshot = api.Snapshot;
export const SandboxRestorer = api.SandboxRestorer;
export const HostModule = api.HostModule;
export const ErrorCode = api.ErrorCode;
export default api;
