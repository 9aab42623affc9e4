// edge-runtime dashboard: polls /dashboard/state, draws agents, plan lanes, live rates,
// the last request's timeline, and streams chat through /v1/chat/completions.
// No framework and nothing fetched from elsewhere; every text from the server goes
// through textContent, never innerHTML.
"use strict";

const KEY_STORE = "edge-runtime-key";
const POLL_MS = 1000;
const HISTORY = 120;  // samples kept for the tokens/s sparkline
const samples = [];
let current = null;  // the last state received
let polling = null;
let chatHistory = [];  // [{role, content}]

// --- the API key: from the URL fragment (never sent to servers), kept in this tab ---

function takeKeyFromFragment() {
  const match = /(?:^#|&)key=([^&]*)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(KEY_STORE, decodeURIComponent(match[1]));
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

function askForKey(message) {
  const form = document.getElementById("key-form");
  form.hidden = false;
  form.querySelector("label").textContent = message;
  document.getElementById("key-input").focus();
}

// --- small DOM helpers ---

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return seconds < 1 ? (seconds * 1000).toFixed(1) + " ms" : seconds.toFixed(2) + " s";
}

function bar(fraction, title) {
  const inner = el("span");
  const clamped = Math.max(0, Math.min(1, fraction));
  inner.style.left = "0";
  inner.style.width = (clamped * 100).toFixed(1) + "%";
  const cls = fraction >= 0.98 ? "bar full" : fraction >= 0.85 ? "bar high" : "bar";
  return el("div", {class: cls, title: title || ""}, inner);
}

function span(lo, hi, total) {
  const inner = el("span");
  inner.style.left = (100 * lo / total).toFixed(2) + "%";
  inner.style.width = Math.max(0.5, 100 * (hi - lo) / total).toFixed(2) + "%";
  return el("div", {class: "bar", title: lo + "–" + (hi - 1) + " of " + total}, inner);
}

// --- drawing ---

function healthBadge(agent) {
  const ok = agent.available && agent.health === "up";
  const text = agent.available ? agent.health : "unreachable";
  const badge = el("span", {class: "badge " + (ok ? "ok" : agent.available ? "warn" : "bad"),
                            text: text.length > 40 ? text.slice(0, 40) + "…" : text});
  badge.title = agent.error || agent.health;
  return badge;
}

function drawAgents(agents) {
  const body = document.querySelector("#agents tbody");
  body.replaceChildren();
  for (const agent of agents) {
    const budget = agent.memory_budget;
    const memory = el("div", {},
      budget ? bar(agent.memory_used / budget, "of the memory budget") : null,
      el("span", {class: "bar-label",
                  text: bytes(agent.memory_used) + " / " + (budget ? bytes(budget) : "no budget")}));
    const row = el("tr", {"data-agent": agent.name},
      el("td", {}, el("div", {class: "lane-name", text: agent.name}),
         el("div", {class: "muted", text: agent.address})),
      el("td", {}, healthBadge(agent)),
      el("td", {}, memory),
      el("td", {text: ms(agent.rtt_s)}),
      el("td", {text: agent.last_seen_s === null ? "–" : ms(agent.last_seen_s) + " ago"}),
      el("td", {text: String(agent.requests_served)}),
      el("td", {text: String(agent.errors_answered)}),
      el("td", {text: agent.deployments.map(d => d.detail).join("; ") || "none"}),
      el("td", {class: "muted", text: agent.profile}));
    body.append(row);
  }
}

function drawLinks(links) {
  const body = document.querySelector("#links tbody");
  body.replaceChildren();
  if (!links || !links.length) {
    body.append(el("tr", {}, el("td", {class: "muted", colSpan: 3, text: "fewer than two agents answering"})));
    return;
  }
  for (const link of links) {
    const bandwidth = link.bandwidth_bytes_per_s ? bytes(link.bandwidth_bytes_per_s) + "/s" : "–";
    body.append(el("tr", {"data-link": link.source + ">" + link.target},
      el("td", {text: link.source + " → " + link.target}),
      el("td", {text: ms(link.rtt_s)}),
      el("td", {text: link.error ? bandwidth + " (" + link.error + ")" : bandwidth})));
  }
}

function drawPlan(state) {
  const root = document.getElementById("plan");
  document.getElementById("plan-text").textContent = state.plan_text || "";
  root.replaceChildren();
  if (!state.plan.length) {
    root.append(el("p", {class: "muted", text: "nothing deployed"}));
    return;
  }
  for (const deployment of state.plan) {
    const dims = deployment.dimensions;
    const grid = el("div", {class: "lanes"});
    grid.style.gridTemplateColumns = "minmax(8em, 14em) repeat(" + Math.max(1, dims.length) + ", 1fr)";
    grid.append(el("div", {class: "muted", text: "device"}));
    for (const dim of dims) grid.append(el("div", {class: "muted", text: dim.name + " (" + deployment.totals[dim.key] + ")"}));
    for (const lane of deployment.lanes) {
      grid.append(el("div", {class: "lane-name", text: lane.agent, title: lane.detail}));
      for (const dim of dims) {
        const range = lane.ranges[dim.key];
        grid.append(el("div", {class: "lane"},
          range ? span(range[0], range[1], deployment.totals[dim.key]) : el("span", {class: "muted", text: "–"})));
      }
    }
    root.append(el("div", {class: "deployment", "data-deployment": deployment.id},
      el("div", {}, el("strong", {text: deployment.id}), " ", el("span", {class: "muted", text: deployment.type})),
      grid));
  }
}

function drawRates(state) {
  const rates = state.rates;
  document.getElementById("live-section").hidden = !rates;
  if (!rates) return;
  document.getElementById("tokens-per-s").textContent = rates.tokens_per_s.toFixed(1);
  document.getElementById("requests-per-s").textContent = rates.requests_per_s.toFixed(2);
  document.getElementById("queued").textContent = String(rates.queued);
  document.getElementById("slots").textContent = rates.running + " / " + rates.slots;
  samples.push(rates.tokens_per_s);
  while (samples.length > HISTORY) samples.shift();
  const canvas = document.getElementById("spark");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...samples);
  ctx.strokeStyle = "#2d6cdf";
  ctx.lineWidth = 2;
  ctx.beginPath();
  samples.forEach((value, i) => {
    const x = (i / (HISTORY - 1)) * canvas.width;
    const y = canvas.height - 4 - (value / top) * (canvas.height - 8);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function drawTimeline(state) {
  const root = document.getElementById("timeline");
  document.getElementById("timeline-section").hidden = !state.rates;
  const last = state.last_request;
  if (!last) return;
  root.replaceChildren();
  const total = Math.max(last.total_s, 1e-6);
  const track = el("div", {class: "track", title: "queue and prefill, then one tick per token"});
  if (last.first_token_s !== null) {
    const wait = el("div", {class: "wait"});
    wait.style.left = "0";
    wait.style.width = (100 * last.first_token_s / total).toFixed(2) + "%";
    track.append(wait);
  }
  for (const t of last.token_s) {
    const tick = el("div", {class: "tick"});
    tick.style.left = (100 * t / total).toFixed(2) + "%";
    track.append(tick);
  }
  const decode = last.token_s.length > 1
    ? (last.token_s[last.token_s.length - 1] - last.token_s[0]) / (last.token_s.length - 1) : null;
  const spans = last.trace ? traceLanes(last.trace, total, track) : null;
  root.append(...[
    el("div", {text: last.id + " (" + last.endpoint + "): " + last.prompt_tokens + " prompt tokens, "
      + last.token_s.length + " generated, " + (last.finish || last.error || "?") + ", served by " + last.served_by}),
    spans ? null : track,
    el("div", {class: "muted", text: "first token after " + ms(last.first_token_s) + " (queue + prefill), then "
      + (decode === null ? "–" : ms(decode)) + " per token; " + ms(last.total_s) + " in all"}),
    spans].filter(node => node !== null));
}

// The agents' trace spans of the last request (serve --trace): one row per device and
// activity, under the server's token track, on one time axis.
function traceLanes(trace, total, tokens) {
  const grid = el("div", {class: "trace"},
    el("div", {class: "timeline-row"}, el("span", {class: "lane-name", text: "server · tokens"}),
      tokens, el("span", {class: "muted", text: ms(total)})));
  for (const lane of trace.lanes) {
    const track = el("div", {class: "track trace-track"});
    for (const span of lane.spans) {
      const block = el("div", {class: "span lane-" + lane.lane,
        title: lane.device + " " + lane.lane + ": " + span.name + (span.count > 1 ? " ×" + span.count : "")
          + ", " + ms(span.end_s - span.start_s)});
      block.style.left = (100 * span.start_s / total).toFixed(3) + "%";
      block.style.width = Math.max(0.15, 100 * (span.end_s - span.start_s) / total).toFixed(3) + "%";
      track.append(block);
    }
    grid.append(el("div", {class: "trace-lane", "data-device": lane.device, "data-lane": lane.lane},
      el("span", {class: "lane-name", text: lane.device + " · " + lane.lane}),
      track,
      el("span", {class: "muted", text: ms(lane.busy_s)})));
  }
  const worst = Math.max(0, ...Object.values(trace.clock_error_s));
  return el("div", {}, grid,
    el("div", {class: "muted", text: trace.spans + " trace spans on " + trace.devices.length
      + " device(s), clocks aligned to ±" + ms(worst)}));
}

function draw(state) {
  current = state;
  document.getElementById("title").textContent = state.title;
  document.title = state.title;
  drawAgents(state.agents);
  drawLinks(state.links);
  drawPlan(state);
  drawRates(state);
  drawTimeline(state);
  document.getElementById("chat-section").hidden = !state.chat;
  const up = state.agents.filter(a => a.available).length;
  const badge = document.getElementById("connection");
  badge.textContent = up + " of " + state.agents.length + " agents up";
  badge.className = "badge " + (up === state.agents.length ? "ok" : up ? "warn" : "bad");
  document.getElementById("updated").textContent = "updated " + new Date(state.taken_at * 1000).toLocaleTimeString();
}

async function poll() {
  try {
    const response = await fetch("/dashboard/state", {headers: authHeaders(), cache: "no-store"});
    if (response.status === 401) {
      stopPolling();
      askForKey(sessionStorage.getItem(KEY_STORE) ? "That key was refused; the right API key:" : "This server wants its API key:");
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
  } catch (error) {
    const badge = document.getElementById("connection");
    badge.textContent = "server unreachable: " + error.message;
    badge.className = "badge bad";
  }
}

function startPolling() {
  stopPolling();
  poll();
  polling = window.setInterval(poll, POLL_MS);
}

function stopPolling() {
  if (polling !== null) window.clearInterval(polling);
  polling = null;
}

// --- chat: streamed through the OpenAI-compatible endpoint (server-sent events) ---

function addMessage(role, text) {
  const box = document.getElementById("messages");
  const node = el("div", {class: "msg " + role, text: text});
  box.append(node);
  box.scrollTop = box.scrollHeight;
  return node;
}

async function send(event) {
  event.preventDefault();
  const input = document.getElementById("chat-input");
  const text = input.value.trim();
  if (!text || !current || !current.model) return;
  input.value = "";
  const button = document.getElementById("chat-send");
  button.disabled = true;
  chatHistory.push({role: "user", content: text});
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.setAttribute("data-chunks", "0");
  let answer = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({"Content-Type": "application/json"}),
      body: JSON.stringify({model: current.model, messages: chatHistory, stream: true,
                            max_tokens: Number(document.getElementById("chat-max").value) || 48,
                            temperature: Number(document.getElementById("chat-temperature").value)}),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || "HTTP " + response.status);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let chunks = 0;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of block.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const message = JSON.parse(data);
          if (message.error) throw new Error(message.error.message);
          const delta = message.choices && message.choices[0] && message.choices[0].delta;
          if (delta && delta.content) {
            answer += delta.content;
            chunks += 1;
            reply.textContent = answer;
            reply.setAttribute("data-chunks", String(chunks));
          }
        }
      }
    }
    chatHistory.push({role: "assistant", content: answer});
  } catch (error) {
    reply.className = "msg error";
    reply.textContent = (answer ? answer + "\n" : "") + "error: " + error.message;
    chatHistory.pop();
  } finally {
    reply.setAttribute("data-done", "1");
    button.disabled = false;
  }
}

function init() {
  takeKeyFromFragment();
  document.getElementById("key-form").addEventListener("submit", event => {
    event.preventDefault();
    const key = document.getElementById("key-input").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    document.getElementById("key-input").value = "";
    document.getElementById("key-form").hidden = true;
    startPolling();
  });
  document.getElementById("chat-form").addEventListener("submit", send);
  document.getElementById("chat-clear").addEventListener("click", () => {
    chatHistory = [];
    document.getElementById("messages").replaceChildren();
  });
  window.addEventListener("hashchange", () => { takeKeyFromFragment(); startPolling(); });
  startPolling();
}

document.addEventListener("DOMContentLoaded", init);
