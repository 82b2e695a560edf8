// The chat page's client: POST rag with "stream": true and render the server-sent events
// (retrieval, token..., done | error; DESIGN 3.1) as they arrive. Relative URLs: the page calls
// the API it was served from, stage path (/v1/) included. Text is only ever set with
// textContent: answers and sources are data, never markup.
"use strict";

const KEY_STORAGE = "llm-twin-api-key"; // sessionStorage: gone when the tab closes
const DEFAULT_RETRY_S = 5;

const $ = (selector, root = document) => root.querySelector(selector);
const conversation = $("#conversation");
const askForm = $("#ask-form");
const keyForm = $("#key-form");
const query = $("#query");
const send = $("#send");
let waitingForKey = null; // {turn, request} to resend once a key is entered

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// One conversation entry: the question, the growing answer, notices, timings, sources.
function newTurn(question) {
  const node = $("#turn-template").content.firstElementChild.cloneNode(true);
  $(".question", node).textContent = question;
  conversation.append(node);
  node.scrollIntoView({ block: "end" });
  const answer = $(".answer", node);
  return {
    node,
    answerText: "",
    append(text) {
      this.answerText += text;
      answer.textContent = this.answerText;
    },
    finish() {
      answer.setAttribute("aria-busy", "false");
    },
    notice(text, kind = "error") {
      const el = $(".notice", node);
      el.textContent = text;
      el.className = `notice ${kind}`;
      el.hidden = false;
    },
    clearNotice() {
      $(".notice", node).hidden = true;
    },
  };
}

function showMeta(turn, timing, traceId) {
  const meta = $(".meta", turn.node);
  $(".timing", meta).textContent = timing;
  if (traceId) {
    $(".trace-id", meta).textContent = traceId;
    $(".copy", meta).addEventListener("click", (event) => copyTrace(event.target, traceId));
  } else {
    $(".trace", meta).hidden = true;
  }
  meta.hidden = false;
}

async function copyTrace(button, traceId) {
  try {
    await navigator.clipboard.writeText(traceId);
    button.textContent = "Copied";
  } catch {
    // No clipboard permission (e.g. plain http on another host): select it for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents(button.previousElementSibling);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
}

function safeLink(link) {
  try {
    const url = new URL(link);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

// sources from the retrieval event; contexts (with `content`) from done when include_context.
function showSources(turn, sources, contexts = []) {
  const section = $(".sources", turn.node);
  const list = $("ol", section);
  list.replaceChildren();
  const content = new Map(contexts.map((c) => [c.id, c.content]));
  for (const source of sources) {
    const item = document.createElement("li");
    const head = document.createElement("p");
    const href = source.link && safeLink(source.link);
    const title = document.createElement(href ? "a" : "span");
    title.textContent = source.link || source.collection;
    if (href) {
      title.href = href;
      title.rel = "noopener noreferrer";
      title.target = "_blank";
    }
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = `${source.author_full_name} · ${source.platform} · score ${source.score.toFixed(3)}`;
    head.append(who, " ", title);
    item.append(head);
    if (content.has(source.id)) {
      const snippet = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = "Snippet";
      const text = document.createElement("p");
      text.textContent = content.get(source.id);
      snippet.append(summary, text);
      item.append(snippet);
    }
    list.append(item);
  }
  section.hidden = sources.length === 0;
}

// Server-sent events from a fetch body: yields {event, data} per event, skips comments.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
        event = "message";
        data = [];
      } else if (line.startsWith(":")) {
        continue; // keep-alive
      } else if (line.startsWith("event:")) {
        event = line.slice(6).trim();
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
    }
  }
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch {
    // not JSON: fall through
  }
  return { code: `http_${response.status}`, message: response.statusText || "no message" };
}

function countdown(turn, seconds_, text) {
  return new Promise((resolve) => {
    let left = seconds_;
    const tick = () => {
      turn.notice(`${text} Retrying in ${left} s.`, "wait");
      if (left <= 0) return resolve();
      left -= 1;
      setTimeout(tick, 1000);
    };
    tick();
  });
}

function retryAfterS(response) {
  const value = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  return Number.isFinite(value) && value >= 0 ? value : DEFAULT_RETRY_S;
}

// One question: POST, then either stream the answer or say in plain words why not.
async function ask(turn, request, attempt = 1) {
  const started = performance.now();
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
  if (apiKey()) headers["x-api-key"] = apiKey();
  let response;
  try {
    response = await fetch("rag", { method: "POST", headers, body: JSON.stringify(request) });
  } catch (error) {
    turn.notice(`The API could not be reached (${error.message}). Check the server and try again.`);
    return;
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 403 && error.code === "forbidden") {
      sessionStorage.removeItem(KEY_STORAGE);
      turn.notice(`${error.message}: enter the API key below to send this question.`);
      waitingForKey = { turn, request };
      keyForm.hidden = false;
      $("#api-key").focus();
      return;
    }
    if (response.status === 503 && attempt === 1) {
      const wait = retryAfterS(response);
      await countdown(turn, wait, `The model is not available yet (${error.message}).`);
      turn.clearNotice();
      return ask(turn, request, attempt + 1);
    }
    if (response.status === 429) {
      turn.notice(
        `Too many requests: please slow down and try again in ${retryAfterS(response)} s (${error.message}).`,
      );
      return;
    }
    const again = response.status === 503 ? " It is still not available after one retry." : "";
    turn.notice(`The request failed (${response.status} ${error.code}): ${error.message}.${again}`);
    return;
  }
  await readStream(turn, response, started);
}

async function readStream(turn, response, started) {
  let firstTokenMs = null;
  let traceId = null;
  let sources = [];
  try {
    for await (const { event, data } of serverSentEvents(response.body)) {
      if (event === "retrieval") {
        traceId = data.trace_id;
        sources = data.sources;
        showSources(turn, sources);
      } else if (event === "token") {
        firstTokenMs ??= performance.now() - started;
        turn.append(data.text);
      } else if (event === "done") {
        showSources(turn, data.sources, data.context ?? []);
        const total = performance.now() - started;
        const first = firstTokenMs === null ? "no tokens" : `first token ${seconds(firstTokenMs)}`;
        showMeta(turn, `${first} · total ${seconds(total)}`, data.trace_id);
        return;
      } else if (event === "error") {
        const kept = turn.answerText ? " What arrived before it is kept above." : "";
        turn.notice(`The answer stopped: ${data.error.message} (${data.error.code}).${kept}`);
        showMeta(turn, `failed after ${seconds(performance.now() - started)}`, traceId);
        return;
      }
    }
    turn.notice("The connection closed before the answer finished; what arrived is kept above.");
  } catch (error) {
    turn.notice(`The stream broke (${error.message}); what arrived is kept above.`);
  } finally {
    turn.finish();
  }
  showMeta(turn, `incomplete after ${seconds(performance.now() - started)}`, traceId);
}

askForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = query.value.trim();
  if (!question || send.disabled) return;
  const request = { query: question, k: Number(askForm.k.value), stream: true, include_context: true };
  const author = askForm.author.value.trim();
  if (author) request.author = author;
  query.value = "";
  await run(newTurn(question), request);
});

// A turn is finished once it has an answer or an error; one waiting for the key stays open.
async function run(turn, request) {
  send.disabled = true;
  try {
    await ask(turn, request);
  } finally {
    send.disabled = false;
    if (waitingForKey?.turn !== turn) turn.finish();
  }
}

query.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    askForm.requestSubmit();
  }
});

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("#api-key").value.trim());
  keyForm.hidden = true;
  $("#api-key").value = "";
  query.focus();
  const waiting = waitingForKey;
  waitingForKey = null;
  if (waiting) run(waiting.turn, waiting.request);
});
