/*
 * wsfabric game example — the browser view. Needs /wsfabric.js loaded first.
 *
 * Routes (examples/game/app.py; messages in examples/game/game.proto, here
 * in their JSON mapping):
 *   game.join {match, name, watch}  -> Board   watch: true takes no cell
 *   game.move {direction}           -> Player  direction: "UP" | "DOWN" | "LEFT" | "RIGHT"
 *   push game.board                 Board, to the match after every change
 *
 * The page watches the match when it connects; "Play" joins it as a
 * player. After a reconnect it joins again the same way.
 */
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const canvas = $('board');
  const ctx = canvas.getContext('2d');
  const params = new URLSearchParams(location.search);
  const MATCH = params.get('match') || 'arena';
  const KEYS = {
    ArrowUp: 'UP', ArrowDown: 'DOWN', ArrowLeft: 'LEFT', ArrowRight: 'RIGHT',
    w: 'UP', s: 'DOWN', a: 'LEFT', d: 'RIGHT',
  };

  const state = { board: null, you: '', name: null, tick: -1 };
  $('match').textContent = 'match ' + MATCH;

  const conn = wsfabric.client({ compressRoutes: true });

  conn.on('open', () => join());
  conn.on('close', (code, reason, willReconnect) => {
    setStatus(willReconnect ? 'reconnecting' : 'closed',
      willReconnect ? 'reconnecting…' : 'disconnected (' + code + ')');
  });
  conn.on('error', (err) => {
    if (err.code !== 'SOCKET_ERROR') showError(err.message || err.code);
  });
  conn.onPush('game.board', (board) => draw(board));

  async function join() {
    const playing = state.name !== null;
    try {
      const board = await conn.request('game.join', { match: MATCH, name: state.name || '', watch: !playing });
      state.you = board.you || '';
      setStatus(playing ? 'playing' : 'watching', playing ? 'playing as ' + state.name : 'watching');
      showError('');
      draw(board);
    } catch (err) {
      if (err.code === 'DISCONNECTED' || err.code === 'CLOSED') return; // 'open' joins again
      state.name = null;
      showError(err.message || err.code);
    }
  }

  $('play-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = $('name').value.trim();
    if (!name) return;
    state.name = name;
    if (conn.state === 'open') join();
    canvas.focus();
  });

  document.addEventListener('keydown', (ev) => {
    const direction = KEYS[ev.key];
    if (!direction || !state.you || ev.target.tagName === 'INPUT') return;
    ev.preventDefault();
    conn.request('game.move', { direction: direction }).catch((err) => {
      if (err.code !== 'too_fast') showError(err.message || err.code);
    });
  });

  // -- drawing ------------------------------------------------------------------

  function draw(board) {
    const tick = Number(board.tick || 0);
    // A push may overtake the answer to game.join: never draw an older board.
    if (state.board && board.match === state.board.match && tick < state.tick) return;
    state.board = board;
    state.tick = tick;
    const w = board.width || 1;
    const h = board.height || 1;
    const cell = Math.floor(Math.min(canvas.width / w, canvas.height / h));
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = '#e3e6ec';
    ctx.lineWidth = 1;
    for (let x = 0; x <= w; x++) line(x * cell + 0.5, 0, x * cell + 0.5, h * cell);
    for (let y = 0; y <= h; y++) line(0, y * cell + 0.5, w * cell, y * cell + 0.5);
    if (board.coin) {
      ctx.fillStyle = '#f2b705';
      ctx.beginPath();
      ctx.arc((board.coin.x + 0.5) * cell, (board.coin.y + 0.5) * cell, cell * 0.3, 0, 2 * Math.PI);
      ctx.fill();
    }
    for (const p of board.players || []) {
      ctx.fillStyle = p.color || '#333';
      ctx.fillRect(p.x * cell + 3, p.y * cell + 3, cell - 6, cell - 6);
      if (p.id === state.you) {
        ctx.strokeStyle = '#1d2330';
        ctx.lineWidth = 2;
        ctx.strokeRect(p.x * cell + 2, p.y * cell + 2, cell - 4, cell - 4);
      }
      ctx.fillStyle = '#1d2330';
      ctx.font = Math.max(10, Math.floor(cell / 3)) + 'px system-ui, sans-serif';
      ctx.fillText(p.name, p.x * cell + 2, p.y * cell - 3 < 10 ? (p.y + 1) * cell + 12 : p.y * cell - 3);
    }
    canvas.dataset.tick = String(tick);
    renderPlayers(board.players || []);
  }

  function line(x1, y1, x2, y2) {
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x2, y2);
    ctx.stroke();
  }

  function renderPlayers(players) {
    const items = players
      .slice()
      .sort((a, b) => b.score - a.score || a.name.localeCompare(b.name))
      .map((p) => {
        const li = document.createElement('li');
        Object.assign(li.dataset, { id: p.id, name: p.name, x: String(p.x), y: String(p.y), score: String(p.score) });
        if (p.id === state.you) li.classList.add('me');
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        swatch.style.background = p.color || '#333';
        const name = document.createElement('span');
        name.textContent = p.name; // user text: textContent only
        const score = document.createElement('span');
        score.className = 'score';
        score.textContent = String(p.score);
        li.append(swatch, name, score);
        return li;
      });
    $('players').replaceChildren(...items);
  }

  function setStatus(name, text) {
    $('status').dataset.state = name;
    $('status').textContent = text;
  }

  function showError(text) {
    $('error').textContent = text;
    $('error').hidden = !text;
  }

  window.__game = state; // for tests and the console
})();
