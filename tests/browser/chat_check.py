#!/usr/bin/env python3
"""
End-to-end check of the chat example in headless Chromium.

    python tests/browser/chat_check.py URL SCREENSHOT_DIR [--timeout 60]

URL is the chat page of a running server, e.g. http://127.0.0.1:8080/ from

    twistd -n wsfabric --app examples.chat.app:ChatApp --static examples/chat/static

Two separate browser contexts (no shared cookies or storage) log in as alice
and bob, both join room "lobby"; alice says "hello bob" and bob must see it;
a message full of HTML must show as text and run nothing; bob opens a
private chat with alice from the online list and alice must receive it; the
member and online lists of both must show both, and the room list must count
2 in lobby. Screenshots of both pages go to SCREENSHOT_DIR (also on failure).

Prints one line, ``chat_check: OK ...`` or ``chat_check: FAIL: reason``, and
exits 0 / 1 (check failed) / 2 (environment) / 3 (overall timeout); see
browserlib.py. Progress goes to stderr.

It relies only on the element ids documented at the top of
examples/chat/static/index.html.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import browserlib  # noqa: E402
from browserlib import CheckFailed, EnvironmentProblem  # noqa: E402

NAME = "chat_check"
ROOM = "lobby"
STEP_MS = 15000
HOSTILE = '<img src=x onerror="window.__xss=1"><b>not bold</b>'

# Does #messages show a line of this kind, sender and exact text?
HAS_LINE_JS = """([kind, sender, text]) => {
  for (const li of document.querySelectorAll('#messages li.msg')) {
    if (li.dataset.kind !== kind || li.dataset.from !== sender) continue;
    const span = li.querySelector('.text');
    if (span && span.textContent === text) return true;
  }
  return false;
}"""

# Do the <li data-nick> of a list hold every one of these nicks?
LIST_HAS_JS = """([selector, nicks]) => {
  const have = new Set(Array.from(document.querySelectorAll(selector + ' li[data-nick]'),
                                  (li) => li.dataset.nick));
  return nicks.every((n) => have.has(n));
}"""


def css_str(value: str) -> str:
    """A CSS attribute-selector string literal."""
    return json.dumps(value)


class User:
    """One browser context with the chat page open, logged in as ``nick``."""

    def __init__(
        self,
        browser: Any,
        nick: str,
        watchdog: browserlib.Watchdog,
        errors: list[str],
        routed: bool = False,
    ) -> None:
        self.nick = nick
        self.watchdog = watchdog
        self.context = browser.new_context(viewport={"width": 1100, "height": 700})
        self.context.set_default_timeout(STEP_MS)
        # (page side, server side) of each routed WebSocket, oldest first.
        self.sockets: list[tuple[Any, Any]] = []
        if routed:
            self.context.route_web_socket(re.compile(r"^wss?://"), self._route)
        self.page = self.context.new_page()
        browserlib.attach_logging(NAME, nick, self.page, errors)

    def _route(self, route: Any) -> None:
        # Without on_message handlers, playwright forwards every message
        # between the page and the real server unchanged.
        self.sockets.append((route, route.connect_to_server()))

    def drop_socket(self, code: int, reason: str) -> None:
        """Close the page's current socket with ``code`` as a server would,
        and the real server's side with it."""
        if not self.sockets:
            raise CheckFailed(f"{self.nick}'s page opened no WebSocket")
        page_side, server_side = self.sockets[-1]
        page_side.close(code=code, reason=reason)
        server_side.close(code=1000, reason="closed by chat_check")

    def wait_new_socket(self, count: int) -> None:
        while len(self.sockets) < count:
            if self.watchdog.remaining_ms() <= 1 or self.timeout() < 150:
                raise CheckFailed(
                    f"{self.nick}'s page did not open a new WebSocket ({self.context_info()})"
                )
            self.page.wait_for_timeout(100)

    def step(self, text: str) -> None:
        self.watchdog.step = f"{self.nick}: {text}"
        browserlib.log(NAME, self.watchdog.step)

    def timeout(self) -> float:
        return self.watchdog.remaining_ms(STEP_MS)

    def context_info(self) -> str:
        """Status and error text of the page, to explain a failed wait."""
        try:
            info = self.page.evaluate(
                """() => {
                  const s = document.getElementById('status');
                  const e = document.getElementById('error');
                  const st = s ? 'status=' + s.dataset.state + ' "' + s.textContent + '"'
                               : 'no #status';
                  const er = e && !e.hidden && e.textContent ? ', error="' + e.textContent + '"'
                             : '';
                  return st + er;
                }"""
            )
        except Exception as e:  # the page may be gone
            info = f"page not readable: {browserlib.one_line(e)[:80]}"
        return f"{self.nick}'s page: {info}"

    def wait_selector(self, selector: str, what: str) -> None:
        try:
            self.page.wait_for_selector(selector, state="attached", timeout=self.timeout())
        except Exception:
            raise CheckFailed(f"{what} (no {selector}; {self.context_info()})") from None

    def wait_js(self, script: str, arg: Any, what: str) -> None:
        try:
            self.page.wait_for_function(script, arg=arg, timeout=self.timeout(), polling=100)
        except Exception:
            raise CheckFailed(f"{what} ({self.context_info()})") from None

    def open(self, url: str) -> None:
        self.step(f"load {url}")
        try:
            response = self.page.goto(url, wait_until="load", timeout=self.timeout())
        except Exception as e:
            raise EnvironmentProblem(f"cannot load {url}: {browserlib.one_line(e)[:200]}") from None
        if response is None or not response.ok:
            status = response.status if response is not None else "no response"
            raise EnvironmentProblem(f"loading {url} gave HTTP {status}")
        if not self.page.evaluate(
            "() => typeof wsfabric === 'object' && typeof wsfabric.connect === 'function'"
        ):
            raise CheckFailed("the page did not load /wsfabric.js (no global wsfabric)")

    def login(self) -> None:
        self.step("connect")
        self.wait_selector(
            '#status[data-state="connected"], #status[data-state="ready"]',
            "the page never connected",
        )
        self.step("log in")
        self.page.fill("#nick", self.nick)
        self.page.click("#login")
        self.wait_selector('#status[data-state="ready"]', f"{self.nick} was not welcomed")
        me = self.page.text_content("#me")
        if me != self.nick:
            raise CheckFailed(f"#me shows {me!r} after logging in as {self.nick!r}")

    def join(self, room: str) -> None:
        self.step(f"join {room}")
        self.page.fill("#room-input", room)
        self.page.click("#join")
        self.wait_selector(
            f'#tabs button[data-kind="room"][data-name={css_str(room)}][aria-selected="true"]',
            f"{self.nick} has no selected tab for room {room} after joining",
        )

    def say(self, text: str) -> None:
        self.step(f"send {text!r}")
        self.page.fill("#text", text)
        self.page.click("#send")

    def expect_line(self, kind: str, sender: str, text: str) -> None:
        self.step(f"expect {kind} from {sender}: {text!r}")
        self.wait_js(
            HAS_LINE_JS,
            [kind, sender, text],
            f"{self.nick} does not see {sender}'s {kind} {text!r} in #messages",
        )

    def expect_list(self, selector: str, nicks: list[str]) -> None:
        self.step(f"expect {selector} to hold {nicks}")
        self.wait_js(
            LIST_HAS_JS,
            [selector, nicks],
            f"{selector} of {self.nick} does not list all of {nicks}",
        )

    def screenshot(self, directory: str, name: str) -> None:
        path = os.path.join(directory, f"{name}-{self.nick}.png")
        try:
            self.page.screenshot(path=path, timeout=self.timeout())
            browserlib.log(NAME, f"screenshot {path}")
        except Exception as e:
            browserlib.log(NAME, f"screenshot {path} failed: {browserlib.one_line(e)[:200]}")


def check(
    url: str,
    shots: str,
    chromium_path: str,
    watchdog: browserlib.Watchdog,
    reconnect: bool,
    bob_url: str | None = None,
) -> str:
    errors: list[str] = []
    with browserlib.chromium(
        chromium_path, launch_timeout_ms=watchdog.remaining_ms(30000)
    ) as browser:
        alice = User(browser, "alice", watchdog, errors)
        bob = User(browser, "bob", watchdog, errors)
        users = [alice, bob]
        try:
            # On a cluster, bob's page may come from another gate than alice's.
            alice.open(url)
            bob.open(bob_url or url)
            for user in users:
                user.login()
            for user in users:
                user.join(ROOM)

            for user in users:
                user.expect_list("#members", ["alice", "bob"])
                user.expect_list("#online", ["alice", "bob"])
            alice.step("expect the room list to count 2 in lobby")
            alice.wait_selector(
                f'#rooms li[data-room={css_str(ROOM)}][data-count="2"]',
                "the room list does not show lobby with 2 members",
            )
            for user in users:
                user.screenshot(shots, "01-joined")

            alice.say("hello bob")
            bob.expect_line("message", "alice", "hello bob")
            alice.expect_line("message", "alice", "hello bob")
            bob.screenshot(shots, "02-message")

            alice.say(HOSTILE)
            bob.expect_line("message", "alice", HOSTILE)
            for user in users:
                user.step("check that HTML in a message stays text")
                injected = user.page.evaluate(
                    "() => window.__xss !== undefined"
                    " || !!document.querySelector('#messages img, #messages b')"
                )
                if injected:
                    raise CheckFailed(f"message HTML was rendered as markup on {user.nick}'s page")

            bob.step("open a private chat with alice from the online list")
            bob.page.click('#online li[data-nick="alice"] button')
            bob.wait_selector(
                '#tabs button[data-kind="pm"][data-name="alice"][aria-selected="true"]',
                "clicking alice in #online did not open a private chat",
            )
            bob.say("psst alice")
            bob.expect_line("private", "bob", "psst alice")
            alice.step("open the private chat tab from bob")
            alice.wait_selector(
                '#tabs button[data-kind="pm"][data-name="bob"]',
                "alice got no private chat tab for bob",
            )
            alice.page.click('#tabs button[data-kind="pm"][data-name="bob"]')
            alice.expect_line("private", "bob", "psst alice")
            for user in users:
                user.screenshot(shots, "03-private")

            if reconnect:
                check_reconnect(browser, url, shots, alice, users, watchdog, errors)

            if errors:
                raise CheckFailed(f"uncaught JavaScript error: {errors[0]}")
        except BaseException:
            for user in users:
                user.screenshot(shots, "failed")
            raise
        finally:
            for user in users:
                try:
                    user.context.close()
                except Exception:
                    pass
    done = " and carol's page came back after a 1012 close" if reconnect else ""
    where = f"{url} and {bob_url}" if bob_url else url
    return f"alice and bob chatted in {ROOM} at {where}{done}; screenshots in {shots}"


def check_reconnect(
    browser: Any,
    url: str,
    shots: str,
    alice: User,
    users: list[User],
    watchdog: browserlib.Watchdog,
    errors: list[str],
) -> None:
    """carol's socket is closed with 1012; her page must log in and rejoin."""
    carol = User(browser, "carol", watchdog, errors, routed=True)
    users.append(carol)
    carol.open(url)
    carol.login()
    carol.join(ROOM)
    alice.step(f"back to the {ROOM} tab")
    alice.page.click(f'#tabs button[data-kind="room"][data-name={css_str(ROOM)}]')
    alice.expect_list("#members", ["carol"])

    carol.step("the server closes carol's socket with 1012")
    carol.drop_socket(1012, "service restart")
    carol.wait_new_socket(2)
    carol.step("log in again after the reconnect")
    carol.wait_selector(
        '#status[data-state="ready"]', "carol's page did not log in again after the reconnect"
    )
    # The server announces every join to the room, the joiner included: a
    # second "carol joined" line means the rejoin is done.
    carol.step(f"wait for the rejoin of {ROOM}")
    carol.wait_js(
        """([room]) => Array.from(
                 document.querySelectorAll('#messages li[data-kind="system"] .text'))
               .filter((s) => s.textContent === 'carol joined #' + room).length >= 2""",
        [ROOM],
        f"carol's page did not rejoin {ROOM} after the reconnect",
    )
    alice.expect_list("#members", ["carol"])
    alice.say("welcome back carol")
    carol.expect_line("message", "alice", "welcome back carol")
    carol.say("glad to be back")
    alice.expect_line("message", "carol", "glad to be back")
    carol.screenshot(shots, "04-reconnected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the chat page, e.g. http://127.0.0.1:8080/")
    parser.add_argument("screenshot_dir")
    parser.add_argument(
        "--bob-url",
        help="open bob's page here instead (another gate of a cluster); alice uses URL",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="overall limit in seconds (default 60)"
    )
    parser.add_argument(
        "--no-reconnect-check",
        dest="reconnect",
        action="store_false",
        help="skip the check that the page logs in and rejoins after a 1012 close",
    )
    parser.add_argument(
        "--chromium",
        default=os.environ.get("WSFABRIC_CHROMIUM", browserlib.DEFAULT_CHROMIUM),
        help="Chromium binary (default $WSFABRIC_CHROMIUM or /usr/bin/chromium)",
    )
    args = parser.parse_args(argv)

    def body(watchdog: browserlib.Watchdog) -> str:
        browserlib.require_loopback(args.url)
        if args.bob_url:
            browserlib.require_loopback(args.bob_url)
        os.makedirs(args.screenshot_dir, exist_ok=True)
        return check(
            args.url, args.screenshot_dir, args.chromium, watchdog, args.reconnect, args.bob_url
        )

    return browserlib.run(NAME, body, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
