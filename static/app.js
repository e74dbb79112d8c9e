// Sends without reloading and shows new messages live. Without this script
// the page still works: the form posts to /messages and the server redirects.
"use strict";

(function () {
  const list = document.getElementById("messages");
  const form = document.getElementById("send");
  const nameInput = document.getElementById("name");
  const textInput = document.getElementById("text");
  const button = document.getElementById("send-button");
  const errorBox = document.getElementById("error");
  const connection = document.getElementById("connection");
  const history = document.getElementById("history");

  const NAME_KEY = "simplechat.name";
  if (!nameInput.value) nameInput.value = localStorage.getItem(NAME_KEY) || "";

  function setConnection(state, label) {
    connection.dataset.state = state;
    connection.textContent = label;
  }

  function showError(message) {
    errorBox.textContent = message || "";
    errorBox.hidden = !message;
  }

  function formatTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  // textContent only: whatever a user typed is shown as text, never markup.
  function render(message) {
    if (document.getElementById("m-" + message.id)) return;
    const item = document.createElement("li");
    item.className = "message";
    item.id = "m-" + message.id;
    item.dataset.id = message.id;
    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = message.name;
    const time = document.createElement("time");
    time.dateTime = message.datetime;
    time.textContent = formatTime(message.datetime);
    meta.append(name, " ", time);
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = message.text;
    item.append(meta, text);
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    list.append(item);
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
    if (nearBottom) item.scrollIntoView({ block: "end" });
  }

  for (const time of list.querySelectorAll("time")) {
    time.textContent = formatTime(time.dateTime);
  }
  window.scrollTo(0, document.body.scrollHeight);

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  // The key is kept until the post succeeds, so retrying after a network
  // error cannot store the message twice.
  let pendingKey = null;

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    const text = textInput.value.trim();
    if (!name || !text) {
      showError(!name ? "Please enter your name." : "Please write a message.");
      return;
    }
    localStorage.setItem(NAME_KEY, name);
    pendingKey = pendingKey || newKey();
    button.disabled = true;
    try {
      const response = await fetch("/api/messages", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, text, id: pendingKey }),
      });
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        pendingKey = null;
        textInput.value = "";
        showError("");
        render(body);
      } else {
        if (response.status !== 503) pendingKey = null;
        showError(body.error || "Sending failed (" + response.status + ").");
      }
    } catch (e) {
      showError("Could not reach the server; press Send to try again.");
    } finally {
      button.disabled = false;
      textInput.focus();
    }
  });

  textInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  if (!window.EventSource) return;
  // The first connection asks for everything after the last rendered message;
  // reconnections send Last-Event-ID themselves.
  const lastId = history.dataset.lastId;
  const source = new EventSource("/api/events" + (lastId ? "?after=" + encodeURIComponent(lastId) : ""));
  setConnection("connecting", "connecting…");
  source.addEventListener("open", () => setConnection("live", "live"));
  source.addEventListener("error", () => {
    setConnection(source.readyState === EventSource.CLOSED ? "offline" : "reconnecting",
      source.readyState === EventSource.CLOSED ? "offline: reload the page" : "reconnecting…");
  });
  source.addEventListener("message", (event) => {
    try {
      render(JSON.parse(event.data));
    } catch (e) {
      // A malformed event is skipped rather than stopping the feed.
    }
  });
})();
