"""The composer never drops what was typed, and a page marks read only what its user sees.

Outgoing messages show at once (sending), then sent; a refused or lost one
stays in the conversation as failed with a retry; pending texts and drafts
survive a reload; no message is sent twice. Errors show one toast at a time,
never over the composer. A background page marks nothing read, and the page
title carries the unread total.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

from playwright.sync_api import Page, expect

from tests.browser.test_web_client import (
    conversation_item, create_conversation, message, send, set_visible, sign_in, wait_online,
)

expect.set_options(timeout=10_000)

# Counts the toasts shown at once (not yet leaving), the most ever, from the page's first moment.
MAX_TOASTS_SCRIPT = """
window.__maxToasts = 0;
new MutationObserver(() => {
  const shown = document.querySelectorAll('[data-testid="toast"]:not(.leaving)').length;
  window.__maxToasts = Math.max(window.__maxToasts, shown);
}).observe(document, { childList: true, subtree: true, attributes: true });
"""


def in_state(page: Page, state: str):
    return page.locator(f'[data-testid="message-list"] [data-testid="message"][data-state="{state}"]')


class SocketSwitch:
    """Stands between one page and the server's WebSocket (the page's HTTP is untouched).

    ``cut()`` drops the socket and refuses new ones until ``restore()``;
    ``drop_messages`` swallows the server's ``new_message`` frames.
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.up = True
        self.drop_messages = False
        self.routes: list = []
        page.route_web_socket(re.compile(r"/v1/ws"), self._route)

    def _route(self, ws) -> None:
        if not self.up:
            ws.close()
            return
        server = ws.connect_to_server()

        def from_server(frame) -> None:
            if self.drop_messages and '"new_message"' in str(frame):
                return
            ws.send(frame)

        server.on_message(from_server)
        self.routes.append((ws, server))

    def cut(self) -> None:
        self.up = False
        for ws, server in self.routes:
            ws.close()
            server.close()
        self.routes.clear()

    def restore(self) -> None:
        self.up = True
        self.page.evaluate("dispatchEvent(new Event('online'))")  # reconnect now, not after the backoff


def type_and_enter(page: Page, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")


def boxes_overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def api_get(base_url: str, user_id: int, path: str) -> dict:
    """An API call as ``user_id`` (a development launch signed by the server), outside any browser."""
    signin = urllib.request.Request(
        base_url + "/v1/dev/signin",
        data=json.dumps({"user_id": user_id}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(signin, timeout=5) as res:
        launch = json.load(res)["launch_params"]
    call = urllib.request.Request(base_url + path, headers={"Authorization": f"VK {launch}"})
    with urllib.request.urlopen(call, timeout=5) as res:
        return json.load(res)


def unread_on_server(base_url: str, user_id: int, conversation_id: str) -> int:
    joined = api_get(base_url, user_id, "/v1/conversations/get?mode=joined")["conversations"]
    return next(c["unreadCount"] for c in joined if str(c["id"]) == conversation_id)


def wait_for_unread_on_server(base_url: str, user_id: int, conversation_id: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while (current := unread_on_server(base_url, user_id, conversation_id)) != count:
        assert time.monotonic() < deadline, f"unread on the server is {current}, not {count}"
        time.sleep(0.1)


# ---------------------------------------------------------------- defect 3: past the rate limit


def test_sending_past_the_rate_limit_loses_no_text_and_shows_one_toast(start_server, new_page):
    server = start_server(CHAT_SEND_RATE_LIMIT="1")  # one a second, in bursts of two
    alice = new_page()
    alice.add_init_script(MAX_TOASTS_SCRIPT)
    sign_in(alice, server.base_url, "Алиса", 7001)
    alice.get_by_test_id("global-chat-item").click()

    texts = [f"очередь {n}" for n in range(6)]
    for text in texts:
        type_and_enter(alice, text)
    expect(alice.get_by_test_id("composer-input")).to_have_value("")
    # Every text stays in the conversation: the refused ones as failed, with a retry.
    for text in texts:
        expect(message(alice, text)).to_have_count(1)
    expect(in_state(alice, "sending")).to_have_count(0)
    failed = in_state(alice, "failed")
    expect(failed.first).to_be_visible()
    expect(failed.first.get_by_test_id("message-status")).to_contain_text("не отправлено")
    expect(failed.first.get_by_test_id("message-retry")).to_have_text("повторить")

    # One toast for the lot, and not over the composer.
    toast = alice.get_by_test_id("toast")
    expect(toast).to_have_count(1)
    assert alice.evaluate("window.__maxToasts") == 1
    assert not boxes_overlap(toast.bounding_box(), alice.get_by_test_id("composer").bounding_box())

    # Retrying sends each refused one (the limit refills one a second).
    for text in texts:
        node = message(alice, text)
        deadline = time.monotonic() + 20
        while node.get_attribute("data-state") != "sent":
            assert time.monotonic() < deadline, f"{text!r} never went through"
            node.get_by_test_id("message-retry").click()
            expect(node).not_to_have_attribute("data-state", "sending")
            if node.get_attribute("data-state") == "failed":
                alice.wait_for_timeout(400)  # refused again: the server's bucket refills with time only
    # Sent once each: a reload shows every text once, none left failed.
    alice.reload()
    wait_online(alice)
    alice.get_by_test_id("global-chat-item").click()
    for text in texts:
        expect(message(alice, text)).to_have_count(1)
        expect(message(alice, text)).to_have_attribute("data-state", "sent")
    expect(in_state(alice, "failed")).to_have_count(0)


def test_toasts_never_cover_the_composer_on_a_phone(start_server, new_page):
    server = start_server(CHAT_SEND_RATE_LIMIT="1")
    phone = new_page(viewport={"width": 375, "height": 740})
    sign_in(phone, server.base_url, "Телефон", 7002)
    phone.get_by_test_id("global-chat-item").click()
    for n in range(4):
        type_and_enter(phone, f"с телефона {n}")
    toast = phone.get_by_test_id("toast")
    expect(toast).to_have_count(1)
    composer = phone.get_by_test_id("composer").bounding_box()
    assert not boxes_overlap(toast.bounding_box(), composer)
    assert toast.bounding_box()["x"] >= 0 and toast.bounding_box()["x"] + toast.bounding_box()["width"] <= 375


# ---------------------------------------------------------------- defect 4: without a connection


def test_a_message_written_offline_shows_survives_a_reload_and_is_sent_once(chat_server, new_page):
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    switch = SocketSwitch(alice)
    sign_in(alice, base, "Алиса", 7101)
    sign_in(bob, base, "Борис", 7102)
    for page in (alice, bob):
        page.get_by_test_id("global-chat-item").click()
    send(alice, "пока на связи")

    switch.cut()
    expect(alice.get_by_test_id("connection-status")).to_have_attribute("data-state", "connecting")
    type_and_enter(alice, "написано без связи")
    waiting = message(alice, "написано без связи")
    expect(waiting).to_have_attribute("data-state", "sending")
    expect(waiting).to_have_attribute("data-mine", "true")
    expect(alice.get_by_test_id("composer-input")).to_have_value("")
    alice.get_by_test_id("composer-input").fill("черновик, не отправленный")

    # A reload while still offline keeps both the waiting message and the draft.
    alice.reload()
    expect(alice.get_by_test_id("app")).to_be_visible()
    alice.get_by_test_id("global-chat-item").click()
    expect(waiting).to_have_attribute("data-state", "sending")
    expect(alice.get_by_test_id("composer-input")).to_have_value("черновик, не отправленный")

    # Back online: it goes out by itself, once.
    switch.restore()
    wait_online(alice, timeout=30_000)
    expect(waiting).to_have_attribute("data-state", "sent")
    expect(message(bob, "написано без связи")).to_have_count(1)
    expect(message(alice, "написано без связи")).to_have_count(1)
    alice.reload()
    wait_online(alice)
    alice.get_by_test_id("global-chat-item").click()
    expect(message(alice, "написано без связи")).to_have_count(1)
    expect(message(alice, "написано без связи")).to_have_attribute("data-state", "sent")
    expect(alice.get_by_test_id("composer-input")).to_have_value("черновик, не отправленный")


def test_a_send_whose_answer_was_lost_is_not_sent_twice(chat_server, new_page):
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    switch = SocketSwitch(alice)
    sign_in(alice, base, "Алиса", 7201)
    sign_in(bob, base, "Борис", 7202)
    conv_id = create_conversation(alice, "Потерянные ответы")
    bob.get_by_test_id("tab-new").click()
    conversation_item(bob, "new", conv_id).get_by_test_id("conversation-join").click()
    expect(bob.get_by_test_id("composer-input")).to_be_visible()

    # What becomes of Alice's sends: stored with the answer held back, lost on the way, or passed.
    # (One route for all: a route removed while it holds a request would let that request through again.)
    fate = {"now": "pass"}

    def on_send(route):
        if fate["now"] == "hold":
            route.fetch()  # stored; the answer never reaches the page
        elif fate["now"] == "abort":
            route.abort()
        else:
            route.continue_()

    alice.route("**/v1/messages/send", on_send)

    # Stored by the server, but neither its answer nor its event reaches the page before a reload.
    switch.drop_messages = True
    fate["now"] = "hold"
    type_and_enter(alice, "дошло, но ответа нет")
    expect(message(bob, "дошло, но ответа нет")).to_be_visible()
    expect(message(alice, "дошло, но ответа нет")).to_have_attribute("data-state", "sending")
    fate["now"] = "pass"
    switch.drop_messages = False
    alice.reload()
    wait_online(alice)
    conversation_item(alice, "joined", conv_id).click()
    got = message(alice, "дошло, но ответа нет")
    expect(got).to_have_attribute("data-state", "sent")
    expect(got).to_have_count(1)
    expect(in_state(alice, "failed")).to_have_count(0)
    expect(message(bob, "дошло, но ответа нет")).to_have_count(1)

    # Lost on the way: failed, still failed after a reload, sent once by a retry.
    fate["now"] = "abort"
    type_and_enter(alice, "не дошло")
    lost = message(alice, "не дошло")
    expect(lost).to_have_attribute("data-state", "failed")
    fate["now"] = "pass"
    alice.reload()
    wait_online(alice)
    unsent = conversation_item(alice, "joined", conv_id).get_by_test_id("conversation-unsent")
    expect(unsent).to_have_text("Не отправлено: не дошло")  # not forgotten in a chat not open
    conversation_item(alice, "joined", conv_id).click()
    expect(lost).to_have_attribute("data-state", "failed")
    lost.get_by_test_id("message-retry").click()
    expect(lost).to_have_attribute("data-state", "sent")
    expect(message(bob, "не дошло")).to_have_count(1)
    expect(message(alice, "не дошло")).to_have_count(1)
    expect(unsent).to_have_count(0)

    # A failed one can also be dropped on purpose.
    fate["now"] = "abort"
    type_and_enter(alice, "передумал")
    expect(message(alice, "передумал")).to_have_attribute("data-state", "failed")
    message(alice, "передумал").get_by_test_id("message-discard").click()
    expect(message(alice, "передумал")).to_have_count(0)
    alice.reload()
    wait_online(alice)
    conversation_item(alice, "joined", conv_id).click()
    expect(message(alice, "не дошло")).to_be_visible()
    expect(message(alice, "передумал")).to_have_count(0)


# ---------------------------------------------------------------- defect 5: read marks and the title


def test_a_background_page_marks_nothing_read_until_it_is_seen(chat_server, new_page):
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    bob.clock.install()  # to run its timers on demand: a read it would send late is sent before we look
    sign_in(alice, base, "Алиса", 7301)
    sign_in(bob, base, "Борис", 7302)
    conv_id = create_conversation(alice, "Кто читает")
    bob.get_by_test_id("tab-new").click()
    conversation_item(bob, "new", conv_id).get_by_test_id("conversation-join").click()
    expect(bob.get_by_test_id("composer-input")).to_be_visible()
    expect(bob).to_have_title("Беседы")
    reads: list[str] = []
    bob.on("request", lambda r: reads.append(r.url) if "/v1/conversations/read/" in r.url else None)

    # Hidden (another tab in front): the message arrives but stays unread.
    set_visible(bob, False)
    send(alice, "пока Борис в другой вкладке")
    expect(message(bob, "пока Борис в другой вкладке")).to_be_visible()
    expect(bob).to_have_title("(1) Беседы")
    expect(conversation_item(bob, "joined", conv_id).get_by_test_id("unread-badge")).to_have_attribute("data-count", "1")
    bob.clock.run_for(2000)
    assert unread_on_server(base, 7302, conv_id) == 1
    assert reads == []

    # Seen again: read at once, here and on the server.
    set_visible(bob, True)
    expect(bob).to_have_title("Беседы")
    expect(conversation_item(bob, "joined", conv_id).get_by_test_id("unread-badge")).to_have_attribute("data-count", "0")
    wait_for_unread_on_server(base, 7302, conv_id, 0)
    assert reads

    # Visible but not focused (another window in front): the same.
    reads.clear()
    bob.evaluate("dispatchEvent(new Event('blur'))")
    send(alice, "пока Борис в другом окне")
    send(alice, "и ещё одно")
    expect(message(bob, "и ещё одно")).to_be_visible()
    expect(bob).to_have_title("(2) Беседы")
    bob.clock.run_for(2000)
    assert unread_on_server(base, 7302, conv_id) == 2
    assert reads == []
    bob.evaluate("dispatchEvent(new Event('focus'))")
    expect(bob).to_have_title("Беседы")
    wait_for_unread_on_server(base, 7302, conv_id, 0)


def test_the_title_counts_unread_messages_live(chat_server, new_page):
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    sign_in(alice, base, "Алиса", 7401)
    sign_in(bob, base, "Борис", 7402)
    conv_id = create_conversation(alice, "Счётчик в заголовке")
    bob.get_by_test_id("tab-new").click()
    conversation_item(bob, "new", conv_id).get_by_test_id("conversation-join").click()
    expect(bob.get_by_test_id("composer-input")).to_be_visible()
    bob.get_by_test_id("global-chat-item").click()  # looks elsewhere

    for n in range(3):
        send(alice, f"непрочитанное {n}")
    expect(bob).to_have_title("(3) Беседы")
    bob.reload()  # the count comes from the server too
    wait_online(bob)
    expect(bob).to_have_title("(3) Беседы")
    conversation_item(bob, "joined", conv_id).click()
    expect(bob).to_have_title("Беседы")


def test_an_own_message_announced_before_its_answer_shows_once(chat_server, new_page):
    """The socket's new_message may beat the HTTP answer: neither chat shows the message twice."""
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    sign_in(alice, base, "Алиса", 7501)
    sign_in(bob, base, "Борис", 7502)
    held = []

    def store_and_hold(route):
        held.append((route, route.fetch()))

    def answer_held() -> None:
        deadline = time.monotonic() + 10
        while not held:  # the handler runs while Playwright waits
            assert time.monotonic() < deadline, "no send was held"
            alice.wait_for_timeout(50)
        route, response = held.pop()
        route.fulfill(response=response)

    alice.route("**/v1/messages/send", store_and_hold)

    # The anonymous chat: nothing says the event is ours until the answer comes.
    for page in (alice, bob):
        page.get_by_test_id("global-chat-item").click()
    type_and_enter(alice, "кто первый")
    expect(message(bob, "кто первый")).to_be_visible()  # stored and announced
    expect(message(alice, "кто первый")).to_have_attribute("data-state", "sending")
    expect(message(alice, "кто первый")).to_have_count(1)
    answer_held()
    expect(message(alice, "кто первый")).to_have_attribute("data-state", "sent")
    expect(message(alice, "кто первый")).to_have_count(1)
    expect(alice.get_by_test_id("global-unread")).to_have_attribute("data-count", "0")

    # A conversation: the event names the sender, so it settles the message before the answer does.
    conv_id = create_conversation(alice, "Гонка ответов")
    bob.get_by_test_id("tab-new").click()
    conversation_item(bob, "new", conv_id).get_by_test_id("conversation-join").click()
    expect(bob.get_by_test_id("composer-input")).to_be_visible()
    type_and_enter(alice, "и снова")
    expect(message(bob, "и снова")).to_be_visible()
    expect(message(alice, "и снова")).to_have_attribute("data-state", "sent")
    answer_held()
    alice.unroute("**/v1/messages/send")
    send(alice, "после гонки")  # after the late answer came and went
    expect(message(alice, "после гонки")).to_have_attribute("data-state", "sent")
    expect(message(alice, "и снова")).to_have_count(1)
    expect(message(alice, "после гонки")).to_have_count(1)


def test_the_anonymous_chat_counts_what_arrives_while_the_page_is_hidden(chat_server, new_page):
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    sign_in(alice, base, "Алиса", 7601)
    sign_in(bob, base, "Борис", 7602)
    for page in (alice, bob):
        page.get_by_test_id("global-chat-item").click()
    set_visible(bob, False)
    send(alice, "анонимно, пока никто не смотрит")
    expect(message(bob, "анонимно, пока никто не смотрит")).to_be_visible()
    expect(bob).to_have_title("(1) Беседы")
    set_visible(bob, True)
    expect(bob).to_have_title("Беседы")
    expect(bob.get_by_test_id("global-unread")).to_have_attribute("data-count", "0")
