// The Recent problems panel: what went wrong, newest first, each problem once with a count.
import { $, clock, el } from "./dom.js";
import { problems } from "./store.js";

const MAX_SHOWN = 8;

export function addProblem(title, detail = "", { key = title } = {}) {
  const list = $("problem-list");
  const empty = list.querySelector(".empty");
  if (empty) empty.remove();
  // The same problem again (say, the status poll and a failed request): one entry, the newest words, a count.
  const existing = problems.entries.get(key);
  let count = 1;
  if (existing && existing.isConnected) {
    count = Number(existing.dataset.count || 1) + 1;
    existing.remove();
  }
  const item = el(
    "li",
    { class: "problem", "data-key": key, "data-count": String(count) },
    el(
      "div",
      { class: "problem-head" },
      el("strong", { text: title }),
      el("span", { class: "problem-time muted small", text: count > 1 ? `${clock()} · ${count}×` : clock() }),
    ),
    detail ? el("p", { text: detail }) : null,
  );
  list.prepend(item);
  problems.entries.set(key, item);
  while (list.children.length > MAX_SHOWN) list.lastElementChild.remove();
  $("problems-clear").hidden = false;
}

export function setupProblems() {
  $("problems-clear").addEventListener("click", () => {
    $("problem-list").replaceChildren(el("li", { class: "empty", text: "None so far." }));
    problems.entries.clear();
    $("problems-clear").hidden = true;
  });
}
