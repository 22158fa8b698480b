/*
 * wsfabric chat example — the page logic. Needs /wsfabric.js loaded first.
 *
 * Protocol: routed messages (wsfabric.client(), JSON codec); the server is
 * examples/chat/app.py, a wsfabric.routing.Router.
 *   requests (client -> server, each answered or failed with an error code)
 *     chat.login {nick}          -> {nick, client_id, rooms:[{name,count}], online:[nick]}
 *     chat.join {room}           -> {room, nicks}     (the room gets chat.joined)
 *     chat.leave {room}          -> {room}            (the room gets chat.left)
 *     chat.say {room, text}      -> null              (the room gets chat.message)
 *     chat.pm {to, text}         -> null              (both uids get chat.private)
 *     chat.who {room}            -> {room, nicks}
 *     chat.rooms                 -> {rooms:[{name,count}]}
 *   pushes (server -> client)
 *     chat.joined / chat.left {room, nick}
 *     chat.message {room, from, text, ts}
 *     chat.private {from, to, text, ts}
 *     chat.online {nicks}                  on every login and disconnect
 *   error codes: bad_request (a missing or too long field), login_required,
 *   not_member, offline
 *
 * The server pushes our own say/pm back, so nothing is shown locally before
 * the server has it. After a reconnect the server has forgotten us: the
 * 'open' handler logs in again and then rejoins every room we were in.
 *
 * All user text goes into the page through textContent, never innerHTML.
 */
(function () {
  'use strict';

  const MAX_LINES = 500; // per conversation, oldest dropped first
  const ROOMS_REFRESH_MS = 10000;

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $('status'), me: $('me'), reconnect: $('reconnect'), error: $('error'),
    loginView: $('login-view'), loginForm: $('login-form'), nick: $('nick'),
    chatView: $('chat-view'), rooms: $('rooms'), joinForm: $('join-form'),
    roomInput: $('room-input'), online: $('online'), tabs: $('tabs'),
    conversation: $('conversation'), leave: $('leave'), messages: $('messages'),
    sendForm: $('send-form'), text: $('text'), members: $('members'),
  };

  const state = {
    wantedNick: null,   // nick to log in with (again, after a reconnect)
    nick: null,         // nick confirmed by the server's welcome
    ready: false,       // welcomed on the current socket
    wantedRooms: new Set(), // rooms to be in; rejoined after a reconnect
    roomList: [],       // [{name, count}] from the server
    online: [],         // nicks
    convs: new Map(),   // key -> {kind, name, lines, unread, members}
    current: null,      // key of the shown conversation
    selectOnJoin: null, // room the user just asked to join
  };

  const key = (kind, name) => kind + ':' + name;

  // -- connection ---------------------------------------------------------------

  // Route compression: frequent routes travel as small integers.
  const conn = wsfabric.client({ compressRoutes: true });

  /**
   * Call a route; a failure is shown (and the promise resolves to
   * undefined), so callers only handle success.
   */
  function call(route, data) {
    return conn.request(route, data).catch((err) => {
      reportError(err);
      return undefined;
    });
  }

  conn.on('open', () => {
    setStatus('connected', 'connected');
    if (state.wantedNick) login(state.wantedNick);
  });

  conn.on('close', (code, reason, willReconnect) => {
    state.ready = false;
    if (!willReconnect) {
      setStatus('closed', 'disconnected (' + code + (reason ? ': ' + reason : '') + ')');
      el.reconnect.hidden = false;
    } else {
      setStatus('reconnecting', 'connection lost, reconnecting…');
    }
  });

  conn.on('reconnecting', (attempt, delay) => {
    setStatus('reconnecting', 'reconnecting in ' + (delay / 1000).toFixed(1) + ' s (attempt ' + attempt + ')');
  });

  conn.on('error', (err) => {
    // Socket errors are followed by 'close', which says what happens next.
    if (err.code !== 'SOCKET_ERROR') reportError(err);
  });

  async function login(nick) {
    setStatus('connected', 'logging in…');
    let welcome;
    try {
      welcome = await conn.request('chat.login', { nick: nick });
    } catch (err) {
      if (err.code === 'DISCONNECTED' || err.code === 'CLOSED') return; // 'open' retries
      // The login was refused: let the user pick another nickname.
      state.wantedNick = null;
      setStatus('connected', 'connected');
      reportError(err);
      return;
    }
    state.nick = state.wantedNick = welcome.nick;
    state.ready = true;
    el.me.textContent = welcome.nick;
    el.loginView.hidden = true;
    el.chatView.hidden = false;
    setStatus('ready', 'online');
    clearError();
    setRooms(welcome.rooms || []);
    setOnline(welcome.online || []);
    if (!state.current) el.roomInput.focus();
    for (const room of state.wantedRooms) sendJoin(room);
  }

  async function sendJoin(room) {
    const reply = await call('chat.join', { room: room });
    if (reply) members(reply);
  }

  // -- server pushes ------------------------------------------------------------

  conn.onPush('chat.joined', (m) => {
    if (!state.wantedRooms.has(m.room)) return; // a room we left meanwhile
    // Our own join arrives before the answer to chat.join.
    const conv = m.nick === state.nick ? ensureConv('room', m.room) : state.convs.get(key('room', m.room));
    if (!conv) return;
    conv.members.add(m.nick);
    addLine(conv, { kind: 'system', text: m.nick + ' joined #' + m.room });
    if (isCurrent(conv)) renderMembers();
    refreshRoomsSoon();
  });

  conn.onPush('chat.left', (m) => {
    const conv = state.convs.get(key('room', m.room));
    if (!conv || m.nick === state.nick) return;
    conv.members.delete(m.nick);
    addLine(conv, { kind: 'system', text: m.nick + ' left #' + m.room });
    if (isCurrent(conv)) renderMembers();
    refreshRoomsSoon();
  });

  conn.onPush('chat.message', (m) => {
    const conv = state.convs.get(key('room', m.room));
    if (conv) addLine(conv, { kind: 'message', from: m.from, text: m.text, ts: m.ts });
  });

  conn.onPush('chat.private', (m) => {
    const peer = m.from === state.nick ? m.to : m.from;
    addLine(ensureConv('pm', peer), { kind: 'private', from: m.from, text: m.text, ts: m.ts });
  });

  conn.onPush('chat.online', (m) => setOnline(m.nicks || []));

  /** The members of a room we are in, from chat.join or chat.who. */
  function members(m) {
    if (!state.wantedRooms.has(m.room)) return; // left meanwhile
    const conv = ensureConv('room', m.room);
    conv.members = new Set(m.nicks || []);
    if (!state.current || state.selectOnJoin === m.room) {
      state.selectOnJoin = null;
      select(conv);
    } else if (isCurrent(conv)) {
      renderMembers();
    }
  }

  function reportError(err) {
    const text = String(err.message || err.code || 'error');
    showError(text);
    const conv = state.convs.get(state.current);
    if (conv) addLine(conv, { kind: 'system', text: 'error: ' + text });
  }

  // -- user actions -------------------------------------------------------------

  el.loginForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const nick = el.nick.value.trim();
    const length = Array.from(nick).length; // code points, as the server counts
    if (length < 1 || length > 32) {
      showError('a nickname has 1 to 32 characters');
      return;
    }
    clearError();
    state.wantedNick = nick;
    // While not connected, the 'open' handler sends the login.
    if (conn.state === 'open') login(nick);
  });

  el.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    joinRoom(el.roomInput.value.trim());
    el.roomInput.value = '';
  });

  el.rooms.addEventListener('click', (ev) => {
    const li = ev.target.closest('li[data-room]');
    if (li) joinRoom(li.dataset.room);
  });

  el.online.addEventListener('click', (ev) => {
    const li = ev.target.closest('li[data-nick]');
    if (!li || li.dataset.nick === state.nick) return;
    select(ensureConv('pm', li.dataset.nick));
    el.text.focus();
  });

  el.tabs.addEventListener('click', (ev) => {
    const tab = ev.target.closest('button[data-kind]');
    if (tab) select(state.convs.get(key(tab.dataset.kind, tab.dataset.name)));
  });

  el.leave.addEventListener('click', () => {
    const conv = state.convs.get(state.current);
    if (!conv) return;
    if (conv.kind === 'room') {
      state.wantedRooms.delete(conv.name);
      call('chat.leave', { room: conv.name });
      refreshRoomsSoon();
    }
    state.convs.delete(state.current);
    state.current = null;
    const next = state.convs.values().next().value;
    if (next) select(next);
    else renderAll();
  });

  el.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = el.text.value;
    if (!text.trim()) return;
    const conv = state.convs.get(state.current);
    if (!conv) {
      showError('join a room or pick an online user first');
      return;
    }
    if (conn.state === 'closed') {
      showError('not connected');
      return;
    }
    if (conv.kind === 'room') call('chat.say', { room: conv.name, text: text });
    else call('chat.pm', { to: conv.name, text: text });
    el.text.value = '';
  });

  el.reconnect.addEventListener('click', () => {
    el.reconnect.hidden = true;
    setStatus('connecting', 'connecting…');
    conn.reconnect();
  });

  function joinRoom(room) {
    if (!room) return;
    const existing = state.convs.get(key('room', room));
    if (existing && state.wantedRooms.has(room)) {
      select(existing);
      return;
    }
    state.wantedRooms.add(room);
    state.selectOnJoin = room;
    // While not logged in, login() (re)joins every wanted room.
    if (state.ready) sendJoin(room);
  }

  // Room counts change without a push; ask now and then, and soon after a
  // join or leave.
  let roomsTimer = null;
  function refreshRoomsSoon() {
    if (roomsTimer) return;
    roomsTimer = setTimeout(() => {
      roomsTimer = null;
      refreshRooms();
    }, 300);
  }
  setInterval(refreshRooms, ROOMS_REFRESH_MS);

  async function refreshRooms() {
    if (!state.ready) return;
    const reply = await call('chat.rooms');
    if (reply) setRooms(reply.rooms || []);
  }

  // -- model helpers ------------------------------------------------------------

  function ensureConv(kind, name) {
    const k = key(kind, name);
    let conv = state.convs.get(k);
    if (!conv) {
      conv = { kind: kind, name: name, key: k, lines: [], unread: 0, members: new Set() };
      state.convs.set(k, conv);
      renderTabs();
    }
    return conv;
  }

  const isCurrent = (conv) => conv.key === state.current;

  function select(conv) {
    if (!conv) return;
    state.current = conv.key;
    conv.unread = 0;
    renderAll();
  }

  function addLine(conv, line) {
    conv.lines.push(line);
    if (conv.lines.length > MAX_LINES) conv.lines.splice(0, conv.lines.length - MAX_LINES);
    if (isCurrent(conv)) {
      const stick = el.messages.scrollTop + el.messages.clientHeight >= el.messages.scrollHeight - 20;
      el.messages.appendChild(lineElement(line));
      while (el.messages.children.length > MAX_LINES) el.messages.firstChild.remove();
      if (stick) el.messages.scrollTop = el.messages.scrollHeight;
    } else if (line.kind !== 'system') {
      conv.unread += 1;
      renderTabs();
    }
  }

  function setRooms(rooms) {
    state.roomList = rooms.filter((r) => r && typeof r.name === 'string');
    renderRooms();
  }

  function setOnline(nicks) {
    state.online = nicks.slice().sort();
    renderOnline();
    renderTabs(); // private chats with offline users are greyed
  }

  // -- rendering (textContent only) -------------------------------------------

  function node(tag, props, children) {
    const e = document.createElement(tag);
    if (props) {
      for (const name of Object.keys(props)) {
        if (name === 'text') e.textContent = props[name];
        else if (name === 'dataset') Object.assign(e.dataset, props[name]);
        else if (name === 'className') e.className = props[name];
        else e.setAttribute(name, props[name]);
      }
    }
    for (const child of children || []) e.appendChild(child);
    return e;
  }

  function renderAll() {
    renderTabs();
    renderMessages();
    renderMembers();
    const conv = state.convs.get(state.current);
    el.conversation.textContent = !conv
      ? 'join a room or click an online user'
      : conv.kind === 'room'
        ? '#' + conv.name
        : 'private chat with ' + conv.name;
    el.leave.disabled = !conv;
    el.leave.textContent = conv && conv.kind === 'pm' ? 'Close' : 'Leave';
  }

  function renderTabs() {
    const tabs = [];
    for (const conv of state.convs.values()) {
      const selected = isCurrent(conv);
      const tab = node('button', {
        type: 'button', role: 'tab', 'aria-selected': String(selected),
        dataset: { kind: conv.kind, name: conv.name },
        text: (conv.kind === 'room' ? '#' : '@') + conv.name,
      });
      if (conv.kind === 'pm' && !state.online.includes(conv.name)) tab.classList.add('offline');
      if (conv.unread && !selected) tab.appendChild(node('span', { className: 'unread', text: String(conv.unread) }));
      tabs.push(tab);
    }
    el.tabs.replaceChildren(...tabs);
  }

  function renderMessages() {
    const conv = state.convs.get(state.current);
    el.messages.replaceChildren(...(conv ? conv.lines.map(lineElement) : []));
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  function lineElement(line) {
    const parts = [];
    if (line.ts) parts.push(node('time', { text: clock(line.ts) }));
    if (line.from !== undefined) parts.push(node('span', { className: 'from', text: String(line.from) }));
    parts.push(node('span', { className: 'text', text: String(line.text) }));
    const li = node('li', { className: 'msg', dataset: { kind: line.kind } }, parts);
    if (line.from !== undefined) li.dataset.from = String(line.from);
    return li;
  }

  function clock(ts) {
    const d = new Date(Number(ts) * 1000);
    if (isNaN(d)) return '';
    return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
  }

  function renderMembers() {
    const conv = state.convs.get(state.current);
    const nicks = conv && conv.kind === 'room' ? Array.from(conv.members).sort() : [];
    el.members.replaceChildren(
      ...nicks.map((nick) => {
        const li = node('li', { dataset: { nick: nick }, text: nick });
        if (nick === state.nick) li.classList.add('me');
        return li;
      })
    );
  }

  function renderOnline() {
    el.online.replaceChildren(
      ...state.online.map((nick) => {
        const me = nick === state.nick;
        const li = node('li', { dataset: { nick: nick } }, [
          node('button', { type: 'button', title: me ? 'you' : 'private message to ' + nick, text: nick }),
        ]);
        if (me) li.classList.add('me');
        return li;
      })
    );
  }

  function renderRooms() {
    el.rooms.replaceChildren(
      ...state.roomList.map((room) =>
        node('li', { dataset: { room: room.name, count: String(room.count) } }, [
          node('button', { type: 'button', title: 'join #' + room.name, text: '#' + room.name }),
          node('span', { className: 'count', text: String(room.count) }),
        ])
      )
    );
  }

  function setStatus(name, text) {
    el.status.dataset.state = name;
    el.status.textContent = text;
    if (name !== 'closed') el.reconnect.hidden = true;
  }

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = '';
    el.error.hidden = true;
  }

  setStatus('connecting', 'connecting…');
})();
