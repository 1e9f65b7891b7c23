"""A clean console on load, and the server's refusals told in Russian (issue 11, defects 2 and 8)."""

from __future__ import annotations

import re
import tempfile

from playwright.sync_api import Page, expect

from server import errors as server_errors
from server.app import ChatServer, route_template
from server.errors import ApiError, DuplicateName, MethodError, TooManyRequests
from server.settings import Settings
from tests.browser.test_web_client import REPO, message, send, sign_in, wait_online

expect.set_options(timeout=10_000)


class ConsoleWatch:
    """Everything a page reports as going wrong: console errors and warnings, failed or refused requests."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("requestfailed", lambda request: self.problems.append(
            f"request failed: {request.method} {request.url} ({request.failure})"))
        page.on("response", self._response)

    def settle(self, page: Page) -> None:
        """Take in what the page reported before now: events arrive in order, ahead of this round trip."""
        page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 0))")

    def _console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.problems.append(f"console {msg.type}: {msg.text} at {msg.location.get('url')}")

    def _response(self, response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")


def test_the_sign_in_page_and_the_signed_in_app_load_with_a_clean_console(chat_server, new_page):
    page = new_page()
    watch = ConsoleWatch(page)
    page.goto(chat_server.base_url + "/")
    expect(page.get_by_test_id("signin-form")).to_be_visible()  # shown once the sign-in check has answered
    watch.settle(page)
    assert watch.problems == [], "on the sign-in page:\n" + "\n".join(watch.problems)

    sign_in(page, chat_server.base_url, "Алиса", 5001)
    page.get_by_test_id("global-chat-item").click()
    send(page, "Привет")
    # A reload signs in again from the identity kept in the tab.
    page.reload()
    wait_online(page)
    page.get_by_test_id("global-chat-item").click()
    expect(message(page, "Привет")).to_be_visible()
    watch.settle(page)
    assert watch.problems == [], "after sign-in:\n" + "\n".join(watch.problems)


def test_a_server_without_dev_sign_in_loads_with_a_clean_console(start_server, new_page):
    server = start_server(CHAT_VK_SECRET="a-real-secret")
    page = new_page()
    watch = ConsoleWatch(page)
    page.goto(server.base_url + "/")
    expect(page.get_by_test_id("vk-required")).to_be_visible()
    watch.settle(page)
    assert watch.problems == [], "\n".join(watch.problems)


# ---------------------------------------------------------------- errors in Russian

CYRILLIC = re.compile("[а-яё]", re.IGNORECASE)


def taken_name_dialog(page: Page, name: str):
    page.get_by_test_id("create-conversation").click()
    page.get_by_test_id("create-name-input").fill(name)
    page.get_by_test_id("dialog-ok").click()


def test_a_name_already_used_is_refused_in_russian(chat_server, new_page):
    page = new_page()
    sign_in(page, chat_server.base_url, "Алиса", 5101)
    taken_name_dialog(page, "Кошки и собаки")
    expect(page.get_by_test_id("chat-title")).to_have_text("Кошки и собаки")
    taken_name_dialog(page, "Кошки и собаки")
    error = page.get_by_test_id("dialog-error")
    expect(error).to_have_text("У вас уже есть беседа с таким названием")
    expect(page.locator("body")).not_to_contain_text(DuplicateName.message)


def test_sending_past_the_rate_limit_is_refused_in_russian(start_server, new_page):
    server = start_server(CHAT_SEND_RATE_LIMIT="1")  # bursts of 2, then one a second
    page = new_page()
    sign_in(page, server.base_url, "Алиса", 5102)
    page.get_by_test_id("global-chat-item").click()
    box = page.get_by_test_id("composer-input")
    for number in range(5):
        box.fill(f"Быстро {number}")
        box.press("Enter")
    expect(page.get_by_test_id("toast").filter(has_text="Слишком много сообщений подряд").first).to_be_visible()
    expect(page.locator("body")).not_to_contain_text(TooManyRequests.message)


def documented_error_table() -> tuple[set[int], dict[tuple[str, int], str]]:
    """docs/API.md's error table: the generic codes of §1, and each route's codes 1-4 of §5 with their text."""
    text = (REPO / "docs" / "API.md").read_text()
    generic_part = text[text.index("three-digit codes are generic"):]
    generic_part = generic_part[:generic_part.index("\n- ")]
    generic = {int(code) for code in re.findall(r"\b(\d{3}) [a-z]", generic_part)}
    per_route: dict[tuple[str, int], str] = {}
    for section in text.split("\n### ")[1:]:
        heading, _, body = section.partition("\n")
        route = re.match(r"(?:GET|POST|DELETE) /v1/(\w+/\w+)", heading)
        if route is None or "Errors:" not in body:
            continue
        errors = body[body.index("Errors:"):].split("\n\n")[0]
        for code, meaning in re.findall(r"(?:Errors:|·)\s*(\d) ([^·(.]+)", errors):
            per_route[(route.group(1), int(code))] = " ".join(meaning.split())
    return generic, per_route


def served_error_table() -> dict[tuple[str, int], str]:
    """The per-route codes the server's handlers answer (their error_codes), by the error's class name."""
    app = ChatServer(Settings(data_dir=tempfile.mkdtemp(prefix="chat-errors-"))).make_app()
    table: dict[tuple[str, int], str] = {}
    for rule in app.wildcard_router.rules:
        route = re.match(r"/v1/(\w+/\w+)", route_template(rule.matcher.regex.pattern))
        for error, code in getattr(rule.target, "error_codes", {}).items():
            table[(route.group(1), code)] = error.__name__
    return table


def test_every_documented_error_code_has_a_russian_message(chat_server, new_page):
    generic, documented = documented_error_table()
    served = served_error_table()
    assert generic >= {400, 401, 404, 405, 413, 429, 431, 500, 503}, generic  # the parse still finds the list
    assert set(documented) == set(served), "docs/API.md §5 and the handlers' error_codes disagree"
    generic |= {error.status for error in vars(server_errors).values()
                if isinstance(error, type) and issubclass(error, ApiError) and not issubclass(error, MethodError)}
    english = {error.message for error in vars(server_errors).values()
               if isinstance(error, type) and issubclass(error, ApiError) and isinstance(error.message, str)}

    page = new_page()
    page.goto(chat_server.base_url + "/")
    cases = [{"route": f"/v1/{route}/7", "code": code, "status": code, "served": served[(route, code)]}
             for route, code in served]
    cases += [{"route": "/v1/messages/send", "code": code, "status": code, "served": None} for code in sorted(generic)]
    answers = page.evaluate(
        """async (cases) => {
            const errors = await import('/errors.js');
            return cases.map((c) => ({...c, failure: errors.failureOf(c), text: errors.knownMessage(c)}));
        }""",
        cases,
    )
    missing = [f"{a['route']} code {a['code']}" for a in answers if not a["text"] or not CYRILLIC.search(a["text"])]
    assert not missing, "no Russian message for: " + ", ".join(missing)
    assert not [a["text"] for a in answers if a["text"] in english]
    # The client reads each route's numbers as the server means them.
    wrong = [f"{a['route']} code {a['code']}: {a['failure']}, not {a['served']}" for a in answers
             if a["served"] and a["failure"] != a["served"]]
    assert not wrong, wrong
