// Sends without reloading, shows new messages live and loads older ones in
// place. Without this script the page still works: the form posts to
// /messages, "Older messages" is a link to /?before=<id>, and the history
// opens at its newest end by CSS alone.
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
  const log = document.getElementById("log");
  const newMessages = document.getElementById("new-messages");
  const announcer = document.getElementById("announcer");
  // A page of older history (/?before=<id>) is not followed live, and
  // sending from it goes back to the latest messages by the plain form post.
  const paged = history.dataset.before !== undefined;
  const PAGE = 100;

  // How many messages the page keeps. Left open all day in a busy room (a
  // class of 40), a page that kept every message would grow without
  // bound: thousands of messages of up to 2,000 characters each, in the
  // document, in the browser's memory and in every layout. 500 is five
  // pages of history to scroll through without a fetch, and at most about
  // a million characters of text, which a phone lays out without a pause.
  // Past it the page drops messages from the end away from the reader:
  // following the newest (or walking forward with "Newer messages"), the
  // oldest, which "Older messages" brings back from the server as on a
  // freshly loaded page; reading back (scrolled up with the page full, or
  // loading older messages), the newest, below the view, and live messages
  // are then no longer added below. Nothing the reader is reading, or is
  // about to read in the direction they are going, is taken away.
  //
  // `data-keep` on the history sets another bound (the browser tests set
  // a small one, to go past it with a few hundred messages); never less
  // than two pages, a page loaded and the one being read.
  const KEEP = 500;
  function keep() {
    const asked = parseInt(history.dataset.keep, 10);
    return asked > 0 ? Math.max(asked, 2 * PAGE) : KEEP;
  }
  // Whether messages newer than the last one shown exist that the page
  // does not show: it gave way at its newest end while the reader read
  // back. "Newer messages" at the bottom then brings them, a page at a
  // time, up to the live end, and "New messages" goes to the latest.
  let behind = false;

  // The name is remembered where the browser lets the page keep data; a
  // browser that blocks site data throws at the first touch of storage,
  // and the page then works as before, only without remembering.
  const NAME_KEY = "simplechat.name";
  function stored(key) {
    try {
      return localStorage.getItem(key);
    } catch (e) {
      return null;
    }
  }
  // The server fills the box from the cookie of the last form post (a
  // page of older history sends by the form), which a send with
  // JavaScript does not change. So the name sent last with JavaScript is
  // kept beside what the box was filled with then: while the box is still
  // filled so, no form post came since, and that name is the newer.
  const FILLED_KEY = "simplechat.name.filled";
  const filled = nameInput.value;
  function rememberName(name) {
    try {
      localStorage.setItem(NAME_KEY, name);
      localStorage.setItem(FILLED_KEY, filled);
    } catch (e) {
      // Not kept: blocked, or the storage is full.
    }
  }
  const remembered = stored(NAME_KEY) || "";
  if (!filled || (remembered && stored(FILLED_KEY) === filled)) {
    nameInput.value = remembered || filled;
  }

  function setConnection(state, label) {
    connection.dataset.state = state;
    connection.textContent = label;
  }

  // An error about a field (`invalid`: the name or text box) marks that
  // field invalid and described by the error, which a screen reader reads
  // out with it when it gets the focus.
  function showError(message, invalid) {
    // The line the error takes in the form, or gives back, changes the
    // history's height: the message being read stays where it was, as
    // the newest stays in view when the reader is at the bottom.
    const follow = atBottom();
    const kept = follow ? null : anchor();
    loadError = null;
    errorBox.textContent = message || "";
    errorBox.hidden = !message;
    for (const input of [nameInput, textInput]) {
      if (message && input === invalid) {
        input.setAttribute("aria-invalid", "true");
        input.setAttribute("aria-describedby", "error");
      } else {
        input.removeAttribute("aria-invalid");
        input.removeAttribute("aria-describedby");
      }
    }
    if (follow) history.scrollTop = history.scrollHeight;
    else restore(kept);
  }

  // An error from loading messages (older, newer, the latest) is taken
  // back once a load succeeds, as a send's error is once a send does.
  let loadError = null;
  function showLoadError(message) {
    showError(message);
    loadError = message;
  }
  function loaded() {
    if (loadError !== null && errorBox.textContent === loadError) showError("");
  }

  function formatTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  // --- Scrolling. The history is its own scroll container; measuring by
  // element positions works whichever way the container counts scrollTop.

  function distanceFromBottom() {
    return log.getBoundingClientRect().bottom - history.getBoundingClientRect().bottom;
  }

  function atBottom() {
    return distanceFromBottom() <= 8;
  }

  function scrollToBottom() {
    // Clamped by the browser to the newest end: the largest scrollTop, or
    // 0 where column-reverse counts it from the bottom.
    history.scrollTop = history.scrollHeight;
    newMessages.hidden = true;
  }

  // The first message at least partly in view, and where it is: after the
  // list changes above or below it, it is put back where it was. A scroll
  // offset snaps to whole device pixels, so a message put back is off by
  // a fraction of one: taken as its place, each new message moved the
  // view by that much more (a third of a pixel a message, a message's
  // height in a busy hour). So the place it was put back to stands for
  // it while it is within a pixel of it.
  let placed = null;
  function anchor() {
    const top = history.getBoundingClientRect().top;
    for (const item of list.children) {
      const rect = item.getBoundingClientRect();
      if (rect.bottom > top) {
        const near = placed && placed.item === item && Math.abs(placed.top - rect.top) < 1;
        return { item, top: near ? placed.top : rect.top };
      }
    }
    return null;
  }

  function restore(kept) {
    if (!kept) return;
    const moved = kept.item.getBoundingClientRect().top - kept.top;
    if (moved) history.scrollTop += moved;
    placed = kept;
  }

  history.addEventListener("scroll", () => {
    if (atBottom() && !behind) newMessages.hidden = true;
  }, { passive: true });
  // A control that goes away once used leaves the focus on the history
  // rather than on the page's body, where a screen reader loses its place.
  function leaving(control) {
    if (document.activeElement === control) history.focus({ preventScroll: true });
  }
  newMessages.addEventListener("click", () => {
    leaving(newMessages);
    if (behind) showLatest(true);
    else scrollToBottom();
  });

  // --- Rendering. textContent only: whatever a user typed is shown as
  // text, never markup; <bdi> and dir="auto" keep a name or a text from
  // reordering what is around it.
  function build(message) {
    const item = document.createElement("li");
    item.className = "message";
    item.id = "m-" + message.id;
    item.dataset.id = message.id;
    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("bdi");
    name.className = "name";
    name.textContent = message.name;
    const time = document.createElement("time");
    time.dateTime = message.datetime;
    time.textContent = formatTime(message.datetime);
    meta.append(name, " ", time);
    const text = document.createElement("p");
    text.className = "text";
    text.dir = "auto";
    text.textContent = message.text;
    item.append(meta, text);
    return item;
  }

  // The reader's own message, shown as soon as the server stored it, is
  // "unconfirmed" until the event stream brings it back: it never gives
  // way meanwhile (the reader just sent it), and at the end of the
  // history it may stand before messages stored earlier that the stream
  // has yet to bring. `data-sent` numbers the reader's messages in the
  // order they were sent.
  let sends = 0;
  function unconfirmed(item) {
    return item.dataset.unconfirmed !== undefined;
  }
  function markUnconfirmed(item) {
    item.dataset.unconfirmed = "";
    if (!item.dataset.sent) item.dataset.sent = String(++sends);
  }

  // --- Telling screen readers about new messages. The history is not a
  // live region: it would read out the whole history at load, and a page
  // of older messages loaded above it. New messages from others are put,
  // as short text, in a visually hidden region of their own with role
  // "log" (https://www.w3.org/TR/wai-aria-1.2/#log): polite (read when the
  // reader is idle, not interrupting) and not atomic, so only what is
  // added is read, each entry once; by the default aria-relevant
  // ("additions text", https://www.w3.org/TR/wai-aria-1.2/#aria-relevant)
  // the old entries removed to keep it short are not read. Not "status",
  // which is atomic (https://www.w3.org/TR/wai-aria-1.2/#status): each
  // change reads the whole region again, and a second message could cut
  // off the first.
  const KEPT_ANNOUNCEMENTS = 10;
  function announce(words) {
    const entry = document.createElement("p");
    entry.textContent = words;
    announcer.append(entry);
    while (announcer.childElementCount > KEPT_ANNOUNCEMENTS) announcer.firstElementChild.remove();
  }

  // Drops the oldest messages past the bound, those wholly above the view
  // only, so nothing the reader sees moves; "Older messages" then goes on
  // from the oldest kept. It stops at the reader's own messages not yet
  // confirmed by the stream (see `unconfirmed` below): they stay shown.
  function dropOldest() {
    const excess = list.children.length - keep();
    if (excess <= 0) return;
    const top = history.getBoundingClientRect().top;
    const items = list.children;
    let cut = 0;
    while (cut < excess && !unconfirmed(items[cut])
      && items[cut].getBoundingClientRect().bottom <= top) cut++;
    if (!cut) return;
    const kept = anchor();
    const dropped = document.createRange();
    dropped.setStartBefore(items[0]);
    dropped.setEndAfter(items[cut - 1]);
    dropped.deleteContents();
    setOlder(list.firstElementChild.dataset.id);
    restore(kept);
  }

  // Drops the newest messages past the bound, those wholly below the view
  // only; the page is then behind, and "Newer messages" goes on from the
  // newest kept. The reader's own messages not yet confirmed by the stream
  // are not dropped: they stay shown, below "Newer messages" (setBehind),
  // whether they stood at the end or in their place among the dropped.
  function dropNewest() {
    const items = list.children;
    const own = list.querySelectorAll("[data-unconfirmed]").length;
    const excess = items.length - own - keep();
    if (excess <= 0) return;
    const bottom = history.getBoundingClientRect().bottom;
    let cut = items.length;
    let dropping = 0;
    while (dropping < excess && items[cut - 1].getBoundingClientRect().top >= bottom) {
      cut--;
      if (!unconfirmed(items[cut])) dropping++;
    }
    if (!dropping) return;
    const kept = anchor();
    const dropped = [...items].slice(cut);
    setBehind(true);
    keepBelow(dropped.filter((item) => item.parentElement === list && unconfirmed(item)));
    for (const item of dropped) {
      if (item.parentElement === list) item.remove();
    }
    restore(kept);
  }

  // Behind, the last message shown is where "Newer messages" goes on
  // from, so the reader's own messages not yet confirmed by the stream
  // that stand at the end, after it and maybe out of the chat's order,
  // move below the link, to a list of their own (#sent): whoever just
  // sent a message sees it there, whenever the page gives way (a page of
  // older messages loaded, or a live one while scrolled up, before the
  // stream brought the message back). Back at the live end they go back
  // to its end; those the history brought meanwhile are shown there in
  // their place instead.
  function setBehind(now) {
    const was = behind;
    behind = now;
    let newer = document.getElementById("newer");
    if (!now) {
      const sent = document.getElementById("sent");
      if (sent) {
        list.append(...sent.children);
        sent.remove();
      }
      if (newer) {
        leaving(newer);
        newer.parentElement.remove();
      }
      return;
    }
    if (!newer) {
      const p = document.createElement("p");
      p.className = "newer";
      newer = document.createElement("a");
      newer.id = "newer";
      // Opened on its own (in another tab), it is the latest messages.
      newer.href = "/";
      newer.textContent = "Newer messages";
      p.append(newer);
      list.after(p);
    }
    // Already behind, every message in the history is in its place.
    if (!was) keepBelow(ownAtEnd());
  }

  // The reader's own messages at the end of the history that the stream
  // has not brought back yet, oldest first.
  function ownAtEnd() {
    const own = [];
    for (let item = list.lastElementChild; item && unconfirmed(item); item = item.previousElementSibling) {
      own.unshift(item);
    }
    return own;
  }

  // Moves the reader's own `items` below "Newer messages", in the order
  // they were sent (which is the chat's order: one send at a time, each
  // stored before the next goes), whatever order they come in.
  function keepBelow(items) {
    if (!items.length) return;
    const sent = sentList();
    const all = [...sent.children, ...items];
    all.sort((a, b) => Number(a.dataset.sent) - Number(b.dataset.sent));
    sent.append(...all);
  }

  // The list below "Newer messages" of the reader's own messages the
  // history shown does not reach yet; made when first needed.
  function sentList() {
    let sent = document.getElementById("sent");
    if (!sent) {
      sent = document.createElement("ol");
      sent.id = "sent";
      sent.className = "sent";
      sent.setAttribute("aria-label", "Your messages");
      document.getElementById("newer").parentElement.after(sent);
    }
    return sent;
  }

  function removeEmpty() {
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
  }

  // A new message at the end: followed when the reader is at the bottom or
  // sent it; otherwise the view stays and "New messages" appears.
  //
  // The reader's own message is shown as soon as it is stored, before the
  // event stream brings it; until then it is marked unconfirmed (see
  // `unconfirmed`). The stream brings messages in the chat's order, so one
  // it brings before it (sent earlier, missed while the stream was down or
  // slow) goes before it.
  //
  // Scrolled up with the page full, the page gives way at its newest end
  // instead of above the view: the message is not added, and "New
  // messages" and "Newer messages" bring it.
  //
  // Returns whether the message is new to the page.
  function append(message, own) {
    const shown = document.getElementById("m-" + message.id);
    if (shown) {
      if (own) {
        // Already shown in its place by a load of the history (the
        // latest, while the answer was on its way), which rebuilds it
        // without the mark: still the reader's own, until the stream
        // brings it.
        if (ownKeys.has(message.id) && !unconfirmed(shown)) markUnconfirmed(shown);
        scrollToBottom();
      } else {
        delete shown.dataset.unconfirmed;
      }
      return false;
    }
    // The latest messages are on their way: this one goes after them.
    if (reloading) {
      reloading.push({ message, own });
      return true;
    }
    const follow = own || atBottom();
    if (!behind && !follow && list.children.length >= keep()) {
      const kept = anchor();
      setBehind(true);
      restore(kept);
    }
    if (behind) {
      if (own) {
        // Sent while behind and the latest could not be loaded: shown
        // below "Newer messages", as when the page gave way after it.
        const item = build(message);
        markUnconfirmed(item);
        keepBelow([item]);
        scrollToBottom();
      } else if (caught) {
        caught.push(message);
      }
      newMessages.hidden = false;
      return true;
    }
    const kept = follow ? null : anchor();
    const item = build(message);
    if (own) markUnconfirmed(item);
    list.insertBefore(item, own ? null : ownAtEnd()[0] || null);
    removeEmpty();
    if (follow) {
      scrollToBottom();
      dropOldest();
    } else {
      restore(kept);
      newMessages.hidden = false;
    }
    return true;
  }

  for (const time of list.querySelectorAll("time")) {
    time.textContent = formatTime(time.dateTime);
  }
  if (!paged) scrollToBottom();

  // --- Older messages, prepended in place; the view does not move. The
  // link may be put back when the history is reloaded, so clicks on it
  // are taken where they pass, on the log.
  function setOlder(before) {
    let older = document.getElementById("older");
    if (!before) {
      if (older) older.parentElement.remove();
      return;
    }
    if (!older) {
      const p = document.createElement("p");
      p.className = "older";
      older = document.createElement("a");
      older.id = "older";
      p.append(older);
      older.textContent = "Older messages";
      log.prepend(p);
    }
    older.dataset.before = before;
    older.href = "/?before=" + encodeURIComponent(before);
  }

  log.addEventListener("click", (event) => {
    const control = event.target.closest("#older, #newer");
    if (!control) return;
    // A click with a modifier (Ctrl or Cmd: a new tab; Shift: a new
    // window) or another button asks the browser to open the link
    // elsewhere, which it does as without the script.
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    if (control.id === "older") loadOlder(control);
    else loadNewer(control);
  });

  async function loadOlder(older) {
    if (older.dataset.loading) return;
    older.dataset.loading = "1";
    const before = older.dataset.before;
    try {
      const response = await fetch("/api/messages?limit=" + PAGE + "&before=" + encodeURIComponent(before));
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        showLoadError(body.error || "Could not load older messages (" + response.status + ").");
        return;
      }
      // The oldest messages were dropped, or the history replaced, while
      // these were on their way: they would not join on. The link goes on
      // from the oldest shown now.
      if (!list.firstElementChild || list.firstElementChild.dataset.id !== before) return;
      const kept = anchor();
      const fragment = document.createDocumentFragment();
      for (const message of body) {
        if (!document.getElementById("m-" + message.id)) fragment.append(build(message));
      }
      list.prepend(fragment);
      if (body.length) removeEmpty();
      restore(kept);
      loaded();
      if (body.length < PAGE) {
        leaving(older);
        older.parentElement.remove();
      } else {
        older.dataset.before = body[0].id;
        older.href = "/?before=" + encodeURIComponent(body[0].id);
      }
      dropNewest();
    } catch (e) {
      showLoadError("Could not reach the server to load older messages.");
    } finally {
      delete older.dataset.loading;
    }
  }

  // --- Newer messages, while the page is behind: appended in place after
  // the newest shown; the view does not move (but where the last of them
  // are shorter than the link they replace, the view can only settle at
  // the end of the history). What the stream brings
  // meanwhile is kept (`caught`): once the answer reaches the newest
  // message stored, those go after it, and the page has its live end again.
  let caught = null;
  async function loadNewer(newer) {
    if (newer.dataset.loading) return;
    newer.dataset.loading = "1";
    const last = list.lastElementChild;
    caught = paged ? null : [];
    try {
      const response = await fetch("/api/messages?limit=" + PAGE + "&after=" + encodeURIComponent(last.dataset.id));
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        // The server no longer has that message (its store was wiped):
        // the latest messages instead, as for a page it cannot place.
        if (response.status === 404 && !paged) showLatest(true);
        else showLoadError(body.error || "Could not load newer messages (" + response.status + ").");
        return;
      }
      // The history was replaced, or its newest end dropped, meanwhile.
      if (!behind || list.lastElementChild !== last) return;
      const reached = body.length < PAGE;
      const kept = anchor();
      const added = new Set();
      const fragment = document.createDocumentFragment();
      for (const message of reached && caught ? body.concat(caught) : body) {
        const shown = document.getElementById("m-" + message.id);
        if (added.has(message.id) || (shown && shown.parentElement === list)) continue;
        // The reader's own, kept below "Newer messages": now in its place,
        // still marked if the stream has not brought it yet, so that it
        // cannot give way before it has.
        added.add(message.id);
        fragment.append(shown || build(message));
      }
      list.append(fragment);
      if (reached) setBehind(false);
      restore(kept);
      loaded();
      dropOldest();
    } catch (e) {
      showLoadError("Could not reach the server to load newer messages.");
    } finally {
      caught = null;
      delete newer.dataset.loading;
    }
  }

  // --- The latest messages in place of the history shown: when the
  // server cannot place the page (it sends "reset": the store was wiped,
  // or the page came from another deployment, so what was posted since is
  // unknown), and when the reader asks for them while the page is behind
  // ("New messages", or sending). What the stream brings meanwhile, and
  // the reader's own message, are kept (`reloading`) and then added as
  // they would have been: after the latest, or, when those could not be
  // loaded, to the page as it was.
  //
  // The reader's own messages that the stream has not brought yet keep
  // their mark when the latest include them: rebuilt without it, a page
  // giving way before the stream brought them took them out of view. Not
  // those at or before where a `reset` went live (`passed`, its id): the
  // stream will never bring them, and they are in their place.
  let reloading = null;
  // A reset that came while the latest were on their way: they may not
  // reach where it went live, so they are loaded again after.
  let resetAgain = null;
  async function showLatest(asked, passed) {
    if (reloading) {
      if (passed !== undefined) resetAgain = passed;
      return;
    }
    reloading = [];
    let body = null;
    try {
      const response = await fetch("/api/messages?limit=" + (PAGE + 1));
      body = await response.json().catch(() => null);
      if (!response.ok || !Array.isArray(body)) body = null;
    } catch (e) {
      // The server could not be reached: the history stays as it was.
    }
    const brought = reloading;
    reloading = null;
    if (body) {
      const latest = body.slice(-PAGE);
      const own = new Map([...log.querySelectorAll("[data-unconfirmed]")].map((item) => [item.dataset.id, item]));
      const live = passed === undefined ? -1 : latest.findIndex((m) => m.id === passed);
      const items = latest.map((message, i) => {
        const item = own.get(message.id);
        own.delete(message.id);
        if (i <= live) {
          // Never brought by the stream, so never to be read out by it.
          ownKeys.delete(message.id);
          if (item) delete item.dataset.unconfirmed;
        }
        return item || build(message);
      });
      list.replaceChildren(...items, ...own.values());
      // The reader's own kept below "Newer messages" that the stream has
      // brought back are among the latest, or older than all of them.
      const sent = document.getElementById("sent");
      if (sent) sent.remove();
      setOlder(body.length > PAGE ? latest[0].id : null);
      setBehind(false);
      if (list.children.length) {
        removeEmpty();
      } else if (!document.getElementById("empty")) {
        const empty = document.createElement("p");
        empty.id = "empty";
        empty.className = "empty";
        empty.textContent = "No messages yet. Say hello!";
        list.after(empty);
      }
      scrollToBottom();
      loaded();
    } else if (asked) {
      showLoadError("Could not reach the server to load the latest messages.");
    }
    for (const { message, own } of brought) append(message, own);
    if (resetAgain !== null) {
      const again = resetAgain;
      resetAgain = null;
      showLatest(false, again);
    }
  }

  // --- The text box grows with what is typed where CSS cannot do it.
  if (!(window.CSS && CSS.supports("field-sizing", "content"))) {
    const grow = () => {
      textInput.style.height = "auto";
      textInput.style.height = textInput.scrollHeight + 2 + "px";
    };
    textInput.addEventListener("input", grow);
    grow();
  }
  // As the box grows or shrinks with what is typed, the history's height
  // changes: the message being read stays where it was (as for the error
  // line), and the newest stays in view at the bottom. Where it was is
  // taken before the edit, and put back after it (and after `grow`).
  let typing = null;
  textInput.addEventListener("beforeinput", () => {
    const follow = atBottom();
    typing = { follow, kept: follow ? null : anchor() };
  });
  textInput.addEventListener("input", () => {
    if (!typing) return;
    const { follow, kept } = typing;
    typing = null;
    if (follow) history.scrollTop = history.scrollHeight;
    else restore(kept);
  });

  // --- Sending.
  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  // The key is kept until the post succeeds, so retrying after a network
  // error cannot store the message twice; it belongs to that name and text,
  // and a changed draft is a new message with a key of its own.
  let pending = null;
  // One send at a time: Enter pressed while a message is on its way does
  // nothing, as the disabled Send button does.
  let sending = false;
  // The keys of the messages sent from this page (a message's id is its
  // key) that the stream may still bring back, sometimes before the
  // answer to the send: the reader is not told about their own message.
  // The stream brings each message once (a reconnection resumes after the
  // last one it brought), so a key goes when its message comes, or when
  // the send is refused (a 4xx other than 409: nothing was stored under
  // it). A key is added once, when the draft gets it, so a retry does not
  // put back one whose message already came. What may stay is the key of
  // a message whose fate is unknown (its answer lost, then the draft
  // changed; the store wiped before the stream brought it): at most
  // SENT_KEPT keys are kept, the oldest going first, so a tab left open
  // for weeks holds no more than that. Only more sends than that waiting
  // for the stream at once (sent while it is down) could let one of the
  // reader's own be read out. The keys the reader's other tabs send with
  // are kept here too, in the same bound (below).
  const ownKeys = new Set();
  const SENT_KEPT = 100;
  function keepOwn(key) {
    ownKeys.add(key);
    if (ownKeys.size > SENT_KEPT) ownKeys.delete(ownKeys.values().next().value);
  }
  function sentFromHere(key) {
    keepOwn(key);
    tellOtherTabs(key);
  }

  // --- The reader's other tabs. Someone with two tabs of the page open
  // heard their own message, sent from one, read out in the other as
  // another's. So each tab tells the others the key of every message it
  // sends, before it sends it: the other tabs know the key long before
  // their streams can bring the message, which comes only once the server
  // has stored it. By a BroadcastChannel where the browser has one
  // (https://html.spec.whatwg.org/multipage/web-messaging.html#broadcasting-to-other-browsing-contexts),
  // and by keeping the latest SENT_KEPT keys in localStorage, whose
  // "storage" event fires in every other tab of the site and not in the
  // one that wrote it
  // (https://html.spec.whatwg.org/multipage/webstorage.html#the-storage-event),
  // which tells the others where there is no BroadcastChannel. The keys
  // kept there also reach a tab opened later, or this one reloaded, while
  // a message is still on its way (a send waiting out an election, or
  // retried): the stream brings it to that tab after it has opened, and
  // it was read out as another's. Where the browser refuses both, each
  // tab knows only the messages it sent itself.
  const SENT_KEY = "simplechat.sent";
  // The keys in `value` as kept: a JSON array, or one key alone as an
  // older page wrote it; nothing from what cannot be read.
  function keysIn(value) {
    if (!value) return [];
    try {
      const keys = JSON.parse(value);
      return Array.isArray(keys) ? keys.filter((key) => typeof key === "string") : [];
    } catch (e) {
      return [value];
    }
  }
  function storedKeys() {
    try {
      return keysIn(localStorage.getItem(SENT_KEY));
    } catch (e) {
      return []; // Site data blocked.
    }
  }
  for (const key of storedKeys()) keepOwn(key);
  let channel = null;
  try {
    if (window.BroadcastChannel) channel = new BroadcastChannel(SENT_KEY);
  } catch (e) {
    channel = null;
  }
  function tellOtherTabs(key) {
    try {
      if (channel) channel.postMessage(key);
    } catch (e) {
      // Not told this way: the channel is closed.
    }
    try {
      const keys = storedKeys().filter((kept) => kept !== key);
      keys.push(key);
      localStorage.setItem(SENT_KEY, JSON.stringify(keys.slice(-SENT_KEPT)));
    } catch (e) {
      // Not kept: storage blocked or full.
    }
  }
  if (channel) {
    channel.addEventListener("message", (event) => {
      if (typeof event.data === "string") keepOwn(event.data);
    });
  }
  window.addEventListener("storage", (event) => {
    if (event.key === SENT_KEY) {
      // Only the keys added: those kept before are known here already,
      // or were brought by the stream and forgotten.
      const before = new Set(keysIn(event.oldValue));
      for (const key of keysIn(event.newValue)) {
        if (!before.has(key)) keepOwn(key);
      }
    }
    // A name another tab sent with is filled in here too, where the box
    // holds nothing typed in this tab (it is empty, or holds the name
    // remembered before) and the reader is not in it. Not while a send of
    // this tab is unsettled: its retry goes under the name it was sent
    // with, or it would be a new message and could be stored twice.
    if (event.key === NAME_KEY && event.newValue && !pending
      && document.activeElement !== nameInput
      && (!nameInput.value || nameInput.value === event.oldValue)) {
      nameInput.value = event.newValue;
    }
  });

  const SEND_WAIT_MS = 45000;
  form.addEventListener("submit", async (event) => {
    if (paged) {
      // Sent by the form post under the form's key, which is the
      // message's id: the other tabs are told of it as of any other.
      const key = form.querySelector("input[name=id]").value;
      if (key) tellOtherTabs(key);
      return;
    }
    event.preventDefault();
    if (sending) return;
    const name = nameInput.value.trim();
    const text = textInput.value.trim();
    if (!name || !text) {
      const invalid = !name ? nameInput : textInput;
      showError(!name ? "Please enter your name." : "Please write a message.", invalid);
      invalid.focus();
      return;
    }
    if (!pending || pending.name !== name || pending.text !== text) {
      pending = { key: newKey(), name, text };
      sentFromHere(pending.key);
    }
    const key = pending.key;
    // What is typed while the message is on its way is the next draft.
    const typed = textInput.value;
    sending = true;
    button.disabled = true;
    // Where the reader goes on: the text box, or the field an error is about.
    let next = textInput;
    // A network path that passes nothing more answers nothing, and the
    // browser would wait for ever with Send greyed out. Given up after
    // SEND_WAIT_MS (longer than the server's default wait for a primary,
    // 30 s, after which it answers itself), the message keeps its key: sent
    // again, it is stored once.
    const abort = new AbortController();
    const gaveUp = setTimeout(() => abort.abort(), SEND_WAIT_MS);
    try {
      const response = await fetch("/api/messages", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, text, id: key }),
        signal: abort.signal,
      });
      const body = await response.json().catch(() => ({}));
      if (abort.signal.aborted) throw new Error("no answer in time");
      if (response.ok) {
        pending = null;
        // Remembered once a message was sent with it, as the form post's
        // cookie is: a name the server refused is not filled in next time.
        rememberName(name);
        // Only what was sent goes; what was typed after it stays. A box
        // changed in what was sent is left as it is.
        if (textInput.value.startsWith(typed)) {
          textInput.value = textInput.value.slice(typed.length).trimStart();
          textInput.dispatchEvent(new Event("input"));
        }
        showError("");
        // Sent while the page is behind: the latest, with it.
        if (behind) showLatest(true);
        append(body, true);
      } else {
        if (response.status !== 503) pending = null;
        // Refused, nothing stored; but a 409 says a message has that key.
        if (response.status >= 400 && response.status < 500 && response.status !== 409) {
          ownKeys.delete(key);
        }
        if (body.field === "name") next = nameInput;
        showError(body.error || "Sending failed (" + response.status + ").",
          body.field === "name" || body.field === "text" ? next : null);
      }
    } catch (e) {
      showError(abort.signal.aborted
        ? "No answer from the server; press Send to try again (it is stored once)."
        : "Could not reach the server; press Send to try again.");
    } finally {
      clearTimeout(gaveUp);
      sending = false;
      button.disabled = false;
      next.focus();
    }
  });

  // With a keyboard Enter sends and Shift+Enter starts a new line. On a
  // touch screen, whose keyboard has no Shift+Enter, Enter starts a new
  // line and Send sends.
  const enterSends = !(window.matchMedia && matchMedia("(pointer: coarse)").matches);
  textInput.addEventListener("keydown", (event) => {
    if (enterSends && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  if (paged || !window.EventSource) return;
  // The first connection asks for everything after the last rendered message;
  // the browser's own reconnections send Last-Event-ID themselves.
  let lastEventId = history.dataset.lastId || "";
  // A stream the server refused (an error status: every connection taken,
  // a proxy between restarts) is not tried again by the browser, so the
  // page does it, later each time, from the last message it was sent.
  const RETRY_FIRST = 2000;
  const RETRY_MOST = 30000;
  let retryDelay = RETRY_FIRST;

  // What a stream replays when it opens (the messages missed while it was
  // down) comes in a burst: counted until none has come for SETTLE ms,
  // then told as one summary ("5 new messages"), or read as the message if
  // only one came. The first stream's replay is part of the page load,
  // which announces nothing: it comes as the stream opens, so it is over
  // SETTLE ms after that, however busy the room. (Were it over only once
  // none had come for SETTLE ms, messages coming more often than that
  // would keep the page silent.) Outside a burst, each message is read.
  const SETTLE = 700;
  let burst = null;
  let opened = false;
  function settle() {
    clearTimeout(burst.timer);
    burst.timer = setTimeout(() => {
      const done = burst;
      burst = null;
      if (done.silent || !done.count) return;
      announce(done.count === 1 ? spoken(done.last) : done.count + " new messages");
    }, SETTLE);
  }
  function spoken(message) {
    return message.name + ": " + message.text;
  }
  function arrived(message) {
    if (burst) {
      burst.count += 1;
      burst.last = message;
      if (!burst.silent) settle();
    } else {
      announce(spoken(message));
    }
  }

  // A network path that stops passing data closes nothing: the browser
  // would wait on such a stream for ever, and the page would say "live".
  // The stream is asked for heartbeats as events (a comment reaches no
  // page), whose data is how many seconds apart they come, the first as
  // it opens; one that brings nothing for MISSED_BEATS of them, or that
  // does not open within that long, is closed and opened again.
  const MISSED_BEATS = 3;
  let beatSecs = 15;
  let current = null;
  let stalled = null;
  function retryLater() {
    // Spread out, so that pages refused together do not all come back at once.
    setTimeout(connect, retryDelay * (0.5 + Math.random() / 2));
    retryDelay = Math.min(retryDelay * 2, RETRY_MOST);
  }
  function replace(source) {
    current = null;
    clearTimeout(stalled);
    source.close();
    setConnection("reconnecting", "reconnecting…");
    retryLater();
  }
  function alive(source) {
    clearTimeout(stalled);
    stalled = setTimeout(() => {
      if (current === source) replace(source);
    }, beatSecs * MISSED_BEATS * 1000);
  }

  function connect() {
    const source = new EventSource("/api/events?heartbeat=event" + (lastEventId ? "&after=" + encodeURIComponent(lastEventId) : ""));
    current = source;
    alive(source);
    source.addEventListener("heartbeat", (event) => {
      const secs = Number(event.data);
      if (secs > 0) beatSecs = secs;
      alive(source);
    });
    source.addEventListener("open", () => {
      alive(source);
      retryDelay = RETRY_FIRST;
      setConnection("live", "live");
      if (!burst) burst = { count: 0, last: null, silent: !opened, timer: null };
      opened = true;
      settle();
      // Nothing to resume from (the room had no message, or the store was
      // emptied): this stream, as the browser's own reconnection of it,
      // starts live, and what was posted since the page last knew is
      // loaded instead.
      if (!lastEventId) showLatest(false);
    });
    source.addEventListener("error", () => {
      if (current !== source) return;
      setConnection("reconnecting", "reconnecting…");
      // Closed for good (a refusal): the browser will not try again.
      if (source.readyState === EventSource.CLOSED) replace(source);
    });
    source.addEventListener("reset", (event) => {
      alive(source);
      // Where the server went live: a reconnect resumes from there.
      lastEventId = event.lastEventId;
      showLatest(false, event.lastEventId);
    });
    source.addEventListener("message", (event) => {
      alive(source);
      if (event.lastEventId) lastEventId = event.lastEventId;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return; // A malformed event is skipped rather than stopping the feed.
      }
      const own = ownKeys.delete(message.id);
      if (append(message, false) && !own) arrived(message);
    });
  }

  setConnection("connecting", "connecting…");
  connect();
})();
