// Fetches URL through the proxy PROXY (http://tenant:token@host:port) with
// undici's ProxyAgent, the way Node sandboxes reach the network, and prints
// the status on the first line and the body after it.
//
// Usage: node fetch.mjs URL PROXY
// Extra CA certificates for HTTPS upstreams come from NODE_EXTRA_CA_CERTS.
import { ProxyAgent, fetch } from 'undici';

const [url, proxy] = process.argv.slice(2);
if (!url || !proxy) {
  console.error('usage: node fetch.mjs URL PROXY');
  process.exit(2);
}

const dispatcher = new ProxyAgent(proxy);
try {
  const response = await fetch(url, { dispatcher, signal: AbortSignal.timeout(20_000) });
  console.log(response.status);
  console.log(await response.text());
} finally {
  await dispatcher.close();
}
