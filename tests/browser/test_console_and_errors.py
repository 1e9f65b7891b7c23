"""A clean console on load, and the server's refusals told in Russian (issue 11, defects 2 and 8)."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.test_web_client import message, send, sign_in, wait_online

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
