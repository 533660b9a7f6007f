// Talking to the pack's routes (nodes/routes.py): JSON requests, the backend catalogue, and each
// model's components (cached). Every rule stays on the server; this module only asks.
// Served at /extensions/<pack>/js/, hence three levels up to /scripts.
import { api } from "../../../scripts/api.js";

const CATALOGUE_RETRY_MS = 5000;
const COMPONENTS_TTL_MS = 15000;
const COMPONENTS_RETRY_MS = 3000;

/** What every node shares: the catalogue (GET /pipequant/backends) and the components per model. */
export const shared = { catalogue: null, catalogueAsked: 0, components: new Map(), loads: null };

/** {ok, status, body}; a body that is not JSON becomes {error: "HTTP <status>"}. */
export async function getJSON(path, init) {
  const res = await api.fetchApi(path, init);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  return { ok: res.ok, status: res.status, body };
}

export function postJSON(path, body) {
  return getJSON(path, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** Ask for the catalogue (at most every few seconds until it came). */
export function loadCatalogue() {
  if (shared.catalogue || Date.now() - shared.catalogueAsked < CATALOGUE_RETRY_MS) return;
  shared.catalogueAsked = Date.now();
  getJSON("/pipequant/backends").then(({ ok, body }) => {
    if (ok) shared.catalogue = body;
  }).catch(() => {});
}

/** Ask for the catalogue again (ComfyUI's refresh: model folders may have come or gone); the old
 * one stays until the new one is there, then `arrived()`. */
export function refreshCatalogue(arrived) {
  shared.catalogueAsked = Date.now();
  shared.components.clear();
  getJSON("/pipequant/backends").then(({ ok, body }) => {
    if (!ok) return;
    shared.catalogue = body;
    arrived?.();
  }).catch(() => {});
}

/** GET /pipequant/components, cached per model (a failure for a few seconds, then asked again). */
export function getComponents(model) {
  const cached = shared.components.get(model);
  const ttl = cached?.error ? COMPONENTS_RETRY_MS : COMPONENTS_TTL_MS;
  if (cached && Date.now() - cached.at < ttl) return cached.promise;
  const record = { at: Date.now(), value: cached?.value ?? null, error: null, promise: null };
  record.promise = getJSON(`/pipequant/components?model=${encodeURIComponent(model)}`).then(({ ok, body }) => {
    if (!ok) throw new Error(body.error ?? "cannot read the model");
    record.value = body;
    return body;
  });
  record.promise.catch((err) => {
    record.error = err;
    record.value = null;
  });
  shared.components.set(model, record);
  return record.promise;
}

/** The components of `model` if they have arrived (for drawing); asks for them otherwise, and
 * calls `arrived` when a new answer comes. */
export function componentsNow(model, arrived) {
  const before = shared.components.get(model);
  const promise = getComponents(model);
  if (shared.components.get(model) !== before) promise.then(() => arrived?.(), () => {});
  return shared.components.get(model)?.value ?? null;
}
