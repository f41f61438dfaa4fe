// The Settings panel: /api/config, the effective configuration shown as tables, and the STT address
// the rest of the page derives from it.
import { ApiError, getJson, llmName } from "./api.js";
import { $, el } from "./dom.js";
import { config } from "./store.js";

const SECTION_ORDER = ["stt", "tts", "llm", "logging", "supervisor"];

export async function loadConfig() {
  try {
    config.served = await getJson("api/config");
  } catch (err) {
    config.served = null;
    $("config-source").textContent =
      err instanceof ApiError && err.status === 404
        ? "This TTS service does not serve /api/config (an older version?): assuming the STT service on port 8010 of this host."
        : `The configuration could not be read (${err.message}).`;
    // A key without the admin scope may not read the configuration, only where the STT service is.
    if (err instanceof ApiError && err.code === "forbidden") config.served = await getJson("api/connection").catch(() => null);
  }
  const stt = (config.served && config.served.stt) || { port: 8010, ws_path: "/ws/stt", use_page_host: true, host: location.hostname };
  const secure = location.protocol === "https:";
  const host = stt.use_page_host ? location.hostname : stt.host;
  const hostPart = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  config.sttUrl = sttOverride() || `${secure ? "wss" : "ws"}://${hostPart}:${stt.port}${stt.ws_path || "/ws/stt"}`;
  // Built from the checked address, never from the link's text: only http(s) lands in these hrefs.
  const docs = new URL(config.sttUrl);
  docs.protocol = docs.protocol === "wss:" ? "https:" : "http:";
  docs.pathname = `${docs.pathname.replace(/\/ws\/stt.*$/, "").replace(/\/$/, "")}/docs`;
  docs.search = docs.hash = "";
  for (const id of ["docs-stt", "footer-stt-docs"]) $(id).href = docs.href;
  if (config.served && config.served.settings) renderConfig(config.served);
}

/** The ?stt= address, if it is a ws:// or wss:// URL on this page's host or on a host of
 * security.allowed_origins: the microphone streams there, so anything else is refused, and said so. */
function sttOverride() {
  const given = new URLSearchParams(location.search).get("stt");
  if (given === null) return null;
  const parse = (text) => (URL.canParse(text) ? new URL(text) : null);
  const origins = (config.served && config.served.allowed_origins) || [];
  const hosts = new Set([location.hostname, ...origins.map((origin) => parse(origin)?.hostname)]);
  const url = parse(given);
  if (url && (url.protocol === "ws:" || url.protocol === "wss:") && hosts.has(url.hostname)) return url.href;
  $("stt-refused-url").textContent = given;
  $("stt-refused").hidden = false;
  return null;
}

/** The LLM server as messages name it: {name, url} (llm.provider's name; its address, credentials removed). */
export function llmServer() {
  const served = config.served;
  const provider = served && served.llm && served.llm.provider;
  return { name: llmName(provider), url: (served && served.llm && served.llm.url) || null };
}

/** The TTS settings section (speed range, text limit), or null without /api/config. */
export function ttsSettings() {
  return (config.served && config.served.settings && config.served.settings.tts) || null;
}

function renderConfig(served) {
  $("footer-version").textContent = `Voice assistant ${served.version || ""}`.trim();
  // Which environment variable set a value (an older service does not say): why it differs from the file.
  const fromEnv = served.set_by_environment || {};
  const overridden = Object.keys(fromEnv).length;
  const source = served.config_file ? `Read from ${served.config_file}, then the environment.` : "Built-in defaults and the environment (no config file).";
  $("config-source").textContent = overridden ? `${source} ${overridden === 1 ? "One value is" : `${overridden} values are`} set by environment variables (marked).` : source;
  // Top-level values (environment) first as "general", then the sections in a reading order.
  const general = {};
  const sections = {};
  for (const [key, value] of Object.entries(served.settings || {})) {
    if (value && typeof value === "object" && !Array.isArray(value)) sections[key] = value;
    else general[key] = value;
  }
  const names = Object.keys(sections).sort((a, b) => (SECTION_ORDER.indexOf(a) + 1 || 99) - (SECTION_ORDER.indexOf(b) + 1 || 99));
  const ordered = [...(Object.keys(general).length ? [["general", general]] : []), ...names.map((name) => [name, sections[name]])];
  const tables = ordered.map(([section, values]) =>
    el("div", { class: "config-section" }, el("h3", { text: section }), el("table", { class: "config" }, el("tbody", {}, ...configRows(section, values, fromEnv)))),
  );
  $("config-tables").replaceChildren(...tables);
}

/**
 * One row per leaf value, nested keys dotted ("groq.api_key"); a redacted secret shows as "hidden", and
 * a value an environment variable set names it (`fromEnv`: {"stt.port": "STT__PORT"}).
 */
function configRows(section, values, fromEnv) {
  if (!values || typeof values !== "object") return [el("tr", {}, el("th", { scope: "row", text: section }), el("td", { text: String(values) }))];
  const rows = [];
  const walk = (prefix, value) => {
    if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
      for (const [k, v] of Object.entries(value)) walk(prefix ? `${prefix}.${k}` : k, v);
      return;
    }
    let shown = value;
    let cls = "";
    if (value === null) {
      shown = "null";
      cls = "muted";
    } else if (typeof value === "string" && /^\*+$/.test(value)) {
      shown = "hidden";
      cls = "secret";
    } else if (typeof value !== "string") {
      shown = JSON.stringify(value);
    }
    const variable = fromEnv[section === "general" ? prefix : `${section}.${prefix}`];
    const cell = el("td", { class: cls, text: String(shown) }, variable ? el("span", { class: "env-var", text: `set by ${variable}` }) : null);
    rows.push(el("tr", { class: variable ? "from-env" : null }, el("th", { scope: "row", text: prefix }), cell));
  };
  walk("", values);
  return rows;
}
