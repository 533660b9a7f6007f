// node --test web/tests — when the editor asks the server again (web/js/poll.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";

import { Poll } from "../js/poll.mjs";

test("a changed key is sent once it settled, and not again", () => {
  const poll = new Poll(250);
  assert.equal(poll.due("a", 0), false); // just changed: wait (typing)
  assert.equal(poll.due("a", 100), false);
  assert.equal(poll.due("a", 260), true);
  poll.key = "a";
  assert.equal(poll.due("a", 1000), false);
  assert.equal(poll.due("b", 1000), false);
  assert.equal(poll.due("c", 1100), false); // changed again: wait again
  assert.equal(poll.due("c", 1360), true);
});

test("only the newest answer counts, and reset asks again", async () => {
  const poll = new Poll(0);
  const shown = [];
  let release;
  const slow = poll.send("old", () => new Promise((r) => (release = r)), (v) => shown.push(v));
  assert.equal(poll.settled("old"), false);
  await poll.send("new", async () => "new answer", (v) => shown.push(v));
  release("old answer");
  await slow;
  assert.deepEqual(shown, ["new answer"]);
  assert.equal(poll.settled("new"), true);
  poll.reset();
  assert.equal(poll.settled("new"), false);
  assert.equal(poll.due("new", 0), true);
});
