// Fetches URL with undici's fetch through EnvHttpProxyAgent, which takes
// its proxy from HTTP_PROXY / HTTPS_PROXY as a sandbox's environment sets
// them, and prints the status on the first line and the body after it.
// An http:// URL goes through a CONNECT tunnel, undici's default; with
// --no-tunnel (proxyTunnel: false) it is sent as an absolute-URI request.
//
// Usage: node fetch-env.mjs [--no-tunnel] URL
import { EnvHttpProxyAgent, fetch } from 'undici';

const args = process.argv.slice(2);
const noTunnel = args[0] === '--no-tunnel';
const url = noTunnel ? args[1] : args[0];
if (!url) {
  console.error('usage: node fetch-env.mjs [--no-tunnel] URL');
  process.exit(2);
}

process.removeAllListeners('warning'); // EnvHttpProxyAgent says it is experimental
const dispatcher = new EnvHttpProxyAgent(noTunnel ? { proxyTunnel: false } : {});
try {
  const response = await fetch(url, { dispatcher, signal: AbortSignal.timeout(20_000) });
  console.log(response.status);
  console.log(await response.text());
} finally {
  await dispatcher.close();
}
