// When to ask the server again: a request is sent once its key has stayed the same for a moment
// (typing), and only the newest answer counts. Pure (no editor imports): tested in web/tests.

export class Poll {
  /** The key last sent (null: none yet). */
  key = null;
  /** A changed key, waiting to settle, and since when. */
  pendingKey = null;
  pendingAt = 0;
  /** Requests sent so far (the newest one's number) and those not answered yet. */
  seq = 0;
  inflight = 0;

  constructor(settleMs) {
    this.settleMs = settleMs;
  }

  /** True when a request for `key` should be sent now (call it on every tick). */
  due(key, now = Date.now()) {
    if (key === this.key) return false;
    if (key !== this.pendingKey) {
      this.pendingKey = key;
      this.pendingAt = now;
      return this.settleMs <= 0;
    }
    return now - this.pendingAt >= this.settleMs;
  }

  /** Send: `request()` is awaited; `answered(result)` runs only if no newer request was sent meanwhile. */
  async send(key, request, answered) {
    this.key = key;
    const seq = ++this.seq;
    this.inflight++;
    let result;
    try {
      result = await request();
    } finally {
      this.inflight--;
    }
    if (seq === this.seq) answered(result);
  }

  /** Forget the key (the next tick asks again). */
  reset(key = null) {
    this.key = key;
    this.pendingKey = null;
  }

  /** True when the answer shown is for `key` and nothing is on its way. */
  settled(key) {
    return this.key === key && this.inflight === 0;
  }
}
