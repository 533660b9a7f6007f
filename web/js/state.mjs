// What the extension keeps on each of the pack's nodes (`node.pipequant`), declared in one place
// and grouped by the module that owns each part.
import { Poll } from "./poll.mjs";

export const AUTO = "auto"; // fittedH: a new node, sized to its content
const SETTLE_MS = 250; // a changed request waits this long (typing) before it is sent

export class NodeState {
  constructor(type) {
    this.type = type;
    // Problems the live check put on this node (live_check.mjs), and their key (redraw on change).
    this.problems = [];
    this.problemsKey = "[]";
    // The info panel (panel.mjs): the drawn widget, its lines and when they were laid out.
    this.panel = null;
    this.version = 0; // bumped on every change of content
    this.lines = [];
    this.layoutKey = null;
    this.truncated = false; // longer than the panel shows at first
    this.expanded = false; // the user clicked to see all of it
    this.minWidth = 0; // a table's (Memory Report) natural width, capped
    this.output = null; // Memory Report / Save: the text the node returned when it ran
    this.table = null; // Memory Report: its table as data (laid out for the width)
    // The node's size (size.mjs): the height it was fitted to (AUTO: a new node; null: the
    // user's or the file's) and what Nodes 2.0 draws taller than the canvas counts.
    this.fittedH = AUTO;
    this.vueExtra = 0;
    // Per kind: a Load node's live check, a Backend's widget view, a Map's model, an Auto plan's plan.
    this.check = null;
    this.view = null;
    this.model = null;
    this.plan = null;
    this.derivedName = null; // Save: the name its plan suggests, followed while folder_name is that one
    this.note = ""; // Sampler: which video inputs are hidden, and why
  }
}

/** A Load node's live check (live_check.mjs): the server's last answer for the graph as it was. */
export class LoadCheck {
  poll = new Poll(SETTLE_MS);
  answer = null; // {problems, estimate}
  status = "checking…"; // a muted line under the estimate
}

/** What the Quantization Backend's widgets show (backend_node.mjs), to redo it only on change. */
export class BackendView {
  visibilityKey = null; // the values the hidden/shown widgets were set for
  optionKey = null; // [backend, quant type] the option widgets were made for
  quantValues = null; // the quant_type list set on the combo
  dropped = ""; // the options a switch dropped, said on the panel
  showJson = false; // the options text shown although the widgets hold it all
  applying = false;
}

/** The Auto Quantization Plan's plan (autoplan.js): the server's last answer, as lines. */
export class PlanView {
  poll = new Poll(400);
  lines = ["planning…"];
}
