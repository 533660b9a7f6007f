// The info panel: a drawn widget after a node's own (never serialized) that shows lines of text
// on the canvas and in Nodes 2.0. What it says comes from `itemsOf(node)`:
//   {kind, text}               words, wrapped to the width
//   {kind, left, right, short} two sides; `short` replaces `right` on a narrow node, else two lines
//   {kind, text, mono: true}   a fixed-width line, wrapped at its spaces
// A long panel shows its first lines and "… n more" (a click expands it).
import { addDrawnWidget, vueMode } from "./drawn.mjs";
import * as L from "./logic.mjs";
import { contentChanged } from "./size.mjs";

export const LINE_H = 16;
const PAD = 5;
export const MARGIN = 15;
const MAX_LINES = 12;
const COLORS = {
  title: "#d8d8d8", row: "#e0e0e0", muted: "#9a9a9a", total: "#ffffff", note: "#b8c4d8",
  error: "#ff7b72", warning: "#e3b341", ok: "#7ee787",
};

let measureCtx = null;
export function font(bold = false, mono = false, monoPx = 11) {
  if (mono) return `${monoPx}px monospace`;
  return `${bold ? "bold " : ""}12px ${globalThis.LiteGraph?.NODE_FONT ?? "Arial"}`;
}
export function measure(text, bold = false, mono = false, monoPx = 11) {
  measureCtx ??= document.createElement("canvas").getContext("2d");
  measureCtx.font = font(bold, mono, monoPx);
  return measureCtx.measureText(text).width;
}

/** The panel's inner width at a node width. */
export function innerWidth(width) {
  return Math.max(40, width - 2 * MARGIN - 8);
}

/** Every line of the items at `width`. */
export function allLines(items, width) {
  const inner = innerWidth(width);
  const lines = [];
  for (const item of items) {
    const bold = item.kind === "total" || item.kind === "title";
    const wrap = (text) => L.wrapText(text, inner, (t) => measure(t, bold, !!item.mono));
    if (item.lines) {
      lines.push(...item.lines); // laid out by the caller (a table)
    } else if (item.left !== undefined) {
      const fits = (right) => measure(item.left, bold) + measure(right, bold) + 12 <= inner;
      if (fits(item.right)) lines.push({ ...item, bold });
      else if (item.short !== undefined && fits(item.short)) lines.push({ ...item, right: item.short, bold });
      else {
        for (const text of wrap(item.left)) lines.push({ kind: item.kind, text, bold });
        for (const text of wrap(item.right)) lines.push({ kind: item.kind, left: "", right: text, bold });
      }
    } else {
      for (const text of wrap(item.text)) lines.push({ kind: item.kind, text, bold, mono: item.mono });
    }
  }
  return lines;
}

function layout(node, width, itemsOf, keyOf) {
  const st = node.pipequant;
  const key = `${st.version}|${width}|${st.expanded ? 1 : 0}|${keyOf(node)}`;
  if (st.layoutKey === key) return st.lines;
  let lines = allLines(itemsOf(node, width), width);
  const pinned = lines.filter((l) => l.pinned); // shown however long the panel is (a table's TOTAL)
  const max = MAX_LINES - pinned.length;
  st.truncated = lines.length > MAX_LINES;
  if (st.truncated && !st.expanded) {
    // In order: every pinned line, and the others while there is room.
    let room = Math.max(0, max - 1);
    const shown = lines.filter((l) => l.pinned || room-- > 0);
    const hidden = lines.length - shown.length;
    lines = [...shown, { kind: "muted", text: `… ${hidden} more line${hidden === 1 ? "" : "s"} (click to show)`, toggle: true }];
  } else if (st.truncated) {
    lines = [...lines, { kind: "muted", text: "(click to show less)", toggle: true }];
  }
  st.layoutKey = key;
  st.lines = lines;
  return lines;
}

function drawLine(ctx, line, x, w, ly) {
  ctx.font = font(line.bold, line.mono, line.monoPx);
  ctx.fillStyle = COLORS[line.kind] ?? COLORS.row;
  if (line.cells) {
    // a table row: each cell at its column, numbers right-aligned
    for (const cell of line.cells) {
      ctx.textAlign = cell.right ? "right" : "left";
      ctx.fillText(cell.text, x + 4 + (cell.right ? cell.x + cell.width : cell.x), ly);
    }
  } else if (line.left !== undefined) {
    ctx.textAlign = "left";
    ctx.fillText(line.left, x + 4, ly);
    ctx.textAlign = "right";
    ctx.fillText(line.right, x + w - 4, ly);
  } else {
    ctx.textAlign = "left";
    ctx.fillText(line.text, x + 4, ly);
  }
}

/**
 * Add the panel to `node` (whose `node.pipequant` is a NodeState) and return it. `keyOf(node)`:
 * what else the lines depend on, besides the state's version and the width.
 */
export function addPanel(node, itemsOf, keyOf = () => "") {
  const st = node.pipequant;
  const panel = {
    name: "pipequant_info",
    type: "pipequant_info",
    value: "",
    y: 0,
    serialize: false,
    pipequantDrawn: true,
    options: { serialize: false },
    computeSize() {
      // The width the panel is drawn at: on the canvas the node's own (LGraphNode.computeSize
      // passes its *minimum* width, which would wrap more lines than the panel draws); in Nodes
      // 2.0 the width its element gave it at the last draw.
      const w = (vueMode() && this?.width) || node.size[0];
      const n = layout(node, w, itemsOf, keyOf).length;
      return [w, n ? n * LINE_H + 2 * PAD : -4];
    },
    mouse(event) {
      // A click on a long panel shows all of it, or its first lines again.
      const type = event?.type;
      if ((type === "pointerdown" || type === "mousedown") && st.truncated) {
        st.expanded = !st.expanded;
        contentChanged(node, true);
        return true;
      }
      return false;
    },
    draw(ctx, _node, width, y) {
      const lines = layout(node, width, itemsOf, keyOf);
      if (!lines.length) return;
      const x = MARGIN;
      const w = width - 2 * MARGIN;
      const h = lines.length * LINE_H + 2 * PAD;
      ctx.save();
      const hasError = st.problems.some((p) => p.severity !== "warning");
      ctx.fillStyle = hasError ? "rgba(120, 20, 20, 0.35)" : "rgba(0, 0, 0, 0.28)";
      ctx.beginPath();
      ctx.roundRect ? ctx.roundRect(x, y, w, h, 6) : ctx.rect(x, y, w, h);
      ctx.fill();
      ctx.beginPath();
      ctx.rect(x, y, w, h);
      ctx.clip(); // nothing is drawn outside the panel, whatever a line measures
      ctx.textBaseline = "middle";
      lines.forEach((line, i) => drawLine(ctx, line, x, w, y + PAD + i * LINE_H + LINE_H / 2));
      ctx.restore();
    },
  };
  return addDrawnWidget(node, panel);
}

/** The lines of a node's problems, first in its panel. */
export function problemItems(problems) {
  return problems.map((p) => ({
    kind: p.severity === "warning" ? "warning" : "error",
    text: `${p.severity === "warning" ? "⚠" : "✖"} ${L.problemText(p)}`,
  }));
}
