#!/usr/bin/env python3
"""
End-to-end check of the game example's browser view in headless Chromium.

    python tests/browser/game_check.py URL SCREENSHOT_DIR --bot NAME [--timeout 60]

URL is the view of a running game server, e.g. http://127.0.0.1:8080/ from

    twistd -n wsfabric --app examples.game.app:GameApp --static examples/game/static

while a bot (``python -m examples.game.bot --name NAME``) plays in match
"arena" over the protobuf codec. The page, on the JSON codec, must:

1. watch the match and list the bot in #players;
2. see the bot move: its cell changes at least three times, the canvas's
   data-tick grows, and the canvas shows the bot's colour at its cell;
3. join as the player "human", and move with the arrow keys.

Screenshots go to SCREENSHOT_DIR (also on failure). Prints one line,
``game_check: OK ...`` or ``game_check: FAIL: reason``, and exits 0 / 1 / 2 /
3 as described in browserlib.py. It relies only on the hooks documented at
the top of examples/game/static/index.html.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import browserlib  # noqa: E402
from browserlib import CheckFailed, EnvironmentProblem  # noqa: E402

NAME = "game_check"
STEP_MS = 15000
MOVES_TO_SEE = 3

# The player named `name` as listed in #players, or null.
PLAYER_JS = """(name) => {
  const li = Array.from(document.querySelectorAll('#players li[data-id]'))
    .find((e) => e.dataset.name === name);
  return li ? {id: li.dataset.id, x: +li.dataset.x, y: +li.dataset.y,
               score: +li.dataset.score} : null;
}"""

# Is the colour of player `name` painted at the centre of its cell?
PAINTED_JS = """(name) => {
  const game = window.__game;
  const board = game && game.board;
  if (!board) return 'no board';
  const p = (board.players || []).find((q) => q.name === name);
  if (!p) return 'no player ' + name;
  const canvas = document.getElementById('board');
  const cell = Math.floor(Math.min(canvas.width / board.width, canvas.height / board.height));
  const px = canvas.getContext('2d').getImageData(
    p.x * cell + Math.floor(cell / 2), p.y * cell + Math.floor(cell / 2), 1, 1).data;
  const hex = p.color.replace('#', '');
  const want = [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
  const near = want.every((v, i) => Math.abs(v - px[i]) <= 8);
  return near ? true : 'pixel ' + Array.from(px).join(',') + ' is not ' + p.color;
}"""


def check(args: argparse.Namespace, watchdog: browserlib.Watchdog) -> str:
    errors: list[str] = []
    with browserlib.chromium(
        args.chromium, launch_timeout_ms=watchdog.remaining_ms(30000)
    ) as browser:
        context = browser.new_context(viewport={"width": 1100, "height": 720})
        context.set_default_timeout(STEP_MS)
        page = context.new_page()
        browserlib.attach_logging(NAME, "view", page, errors)
        page.add_init_script(f"window.__gameCheckPlayer = {PLAYER_JS};")

        def step(text: str) -> None:
            watchdog.step = text
            browserlib.log(NAME, text)

        def shot(name: str) -> None:
            path = os.path.join(args.screenshot_dir, f"{name}.png")
            try:
                page.screenshot(path=path, timeout=watchdog.remaining_ms(STEP_MS))
                browserlib.log(NAME, f"screenshot {path}")
            except Exception as e:
                browserlib.log(NAME, f"screenshot {path} failed: {browserlib.one_line(e)[:200]}")

        def wait_js(script: str, arg: Any, what: str) -> Any:
            try:
                return page.wait_for_function(
                    script, arg=arg, timeout=watchdog.remaining_ms(STEP_MS), polling=50
                ).json_value()
            except Exception:
                state = page.evaluate(
                    "() => { const s = document.getElementById('status');"
                    " const e = document.getElementById('error');"
                    " return (s ? s.dataset.state : '?') + (e && e.textContent ?"
                    " ', error: ' + e.textContent : ''); }"
                )
                raise CheckFailed(f"{what} (page state: {state})") from None

        try:
            step(f"load {args.url}")
            try:
                response = page.goto(
                    args.url, wait_until="load", timeout=watchdog.remaining_ms(20000)
                )
            except Exception as e:
                raise EnvironmentProblem(
                    f"cannot load {args.url}: {browserlib.one_line(e)[:200]}"
                ) from None
            if response is None or not response.ok:
                status = response.status if response is not None else "no response"
                raise EnvironmentProblem(f"loading {args.url} gave HTTP {status}")

            step("watch the match")
            wait_js(
                "() => document.getElementById('status').dataset.state === 'watching'",
                None,
                "the page did not start watching the match",
            )
            step(f"wait for the bot {args.bot} in #players")
            wait_js(PLAYER_JS, args.bot, f"{args.bot} is not listed in #players")
            shot("01-watching")

            cells: list[tuple[int, int]] = []
            first_tick = int(page.get_attribute("#board", "data-tick") or 0)
            while len(cells) <= MOVES_TO_SEE:
                step(f"see {args.bot} move ({len(cells)} cells so far)")
                seen = wait_js(
                    """([name, last]) => {
                         const p = window.__gameCheckPlayer(name);
                         return p && (!last || p.x !== last[0] || p.y !== last[1]) ? p : null;
                       }""",
                    [args.bot, list(cells[-1]) if cells else None],
                    f"{args.bot} did not move on the page after {cells}",
                )
                cells.append((seen["x"], seen["y"]))
            tick = int(page.get_attribute("#board", "data-tick") or 0)
            if tick <= first_tick:
                raise CheckFailed(f"#board data-tick did not grow ({first_tick} -> {tick})")
            step(f"check the canvas shows {args.bot} at its cell")
            painted = page.evaluate(PAINTED_JS, args.bot)
            if painted is not True:
                raise CheckFailed(f"the canvas does not show {args.bot}: {painted}")
            shot("02-bot-moved")

            step("join as the player human")
            page.fill("#name", "human")
            page.click("#play")
            wait_js(
                "() => document.getElementById('status').dataset.state === 'playing'",
                None,
                "the page did not join as a player",
            )
            start = wait_js(PLAYER_JS, "human", "human is not listed in #players")
            step("move with the arrow keys")
            page.locator("#board").click()
            moved = None
            for key in ("ArrowRight", "ArrowLeft", "ArrowDown", "ArrowUp"):
                page.keyboard.press(key)
                try:
                    moved = page.wait_for_function(
                        """([x, y]) => {
                             const p = window.__gameCheckPlayer('human');
                             return p && (p.x !== x || p.y !== y) ? p : null;
                           }""",
                        arg=[start["x"], start["y"]],
                        timeout=watchdog.remaining_ms(3000),
                        polling=50,
                    ).json_value()
                    break
                except Exception:
                    continue  # a wall or the bot in the way: another key
            if moved is None:
                raise CheckFailed(f"the arrow keys did not move human from {start}")
            shot("03-human-moved")
            if errors:
                raise CheckFailed(f"uncaught JavaScript error: {errors[0]}")
        except BaseException:
            shot("failed")
            raise
        finally:
            try:
                context.close()
            except Exception:
                pass
    path = " -> ".join(f"({x},{y})" for x, y in cells)
    return (
        f"the view saw {args.bot} move {path} (tick {first_tick} -> {tick}) and human moved"
        f" from ({start['x']},{start['y']}) to ({moved['x']},{moved['y']});"
        f" screenshots in {args.screenshot_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the game view, e.g. http://127.0.0.1:8080/")
    parser.add_argument("screenshot_dir")
    parser.add_argument("--bot", required=True, help="the name of the bot playing in arena")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="overall limit in seconds (default 60)"
    )
    parser.add_argument(
        "--chromium",
        default=os.environ.get("WSFABRIC_CHROMIUM", browserlib.DEFAULT_CHROMIUM),
        help="Chromium binary (default $WSFABRIC_CHROMIUM or /usr/bin/chromium)",
    )
    args = parser.parse_args(argv)

    def body(watchdog: browserlib.Watchdog) -> str:
        browserlib.require_loopback(args.url)
        os.makedirs(args.screenshot_dir, exist_ok=True)
        return check(args, watchdog)

    return browserlib.run(NAME, body, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
