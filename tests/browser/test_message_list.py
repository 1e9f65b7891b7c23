"""The message list reads like a modern messenger's (issue 11): service lines
for a conversation's creation and for joins and leaves, senders' consecutive
messages grouped under one name and avatar, a stable colour per user, date
separators, a "Новые сообщения" mark at the first unread message (when a chat
opens, and for what arrived while the page was not seen), a "↓ N новых"
button while scrolled up, and earlier pages fetched on scrolling up.

Messages that only set the scene are sent through the HTTP API (fast, and
with the send-rate limit off); the ones a test looks at arrive live.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from tests.browser.test_web_client import (
    conversation_item, create_conversation, message, messages, send, set_visible, sign_in,
)

expect.set_options(timeout=10_000)

# A tall message: a few of them fill the list, so it scrolls.
TALL = "\n".join(["строка"] * 8)


@pytest.fixture
def server(start_server):
    # The scene-setting sends come faster than the default 5 per second.
    return start_server(CHAT_SEND_RATE_LIMIT="0")


# ---------------------------------------------------------------- helpers


def api_send(base_url: str, user_id: int, name: str, conversation_id: str, texts: list[str]) -> None:
    """Send as a signed-in user (who has a page open, so the socket rule holds)."""

    def post(path: str, body: dict, auth: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"VK {auth}"
        request = urllib.request.Request(base_url + path, json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=10) as res:
            return json.load(res)

    launch = post("/v1/dev/signin", {"user_id": user_id, "name": name})["launch_params"]
    for text in texts:
        post("/v1/messages/send", {"text": text, "conversation_id": int(conversation_id)}, launch)


def join(page: Page, conv_id: str) -> None:
    page.get_by_test_id("tab-new").click()
    conversation_item(page, "new", conv_id).get_by_test_id("conversation-join").click()
    pane = page.get_by_test_id("chat-pane")
    expect(pane).to_have_attribute("data-conversation-id", conv_id)
    expect(pane).to_have_attribute("data-kind", "member")
    expect(page.get_by_test_id("composer-input")).to_be_visible()


def open_joined(page: Page, conv_id: str) -> None:
    page.get_by_test_id("tab-joined").click()
    conversation_item(page, "joined", conv_id).click()
    expect(page.get_by_test_id("chat-pane")).to_have_attribute("data-conversation-id", conv_id)
    expect(page.get_by_test_id("message-list")).to_be_visible()


def rows(page: Page) -> list[str]:
    """What the list shows, top to bottom: 'date:…', 'service:…', 'unread:…' and 'msg:<text>'."""
    return page.get_by_test_id("message-list").evaluate(
        """(list) => [...list.querySelectorAll(
            '[data-testid="date-separator"], [data-testid="service-line"], [data-testid="unread-separator"], [data-testid="message"]'
        )].map((el) => {
            const kind = el.dataset.testid;
            if (kind === 'message') return 'msg:' + el.querySelector('[data-testid="message-text"]').textContent;
            return (kind === 'date-separator' ? 'date' : kind === 'service-line' ? 'service' : 'unread') + ':' + el.textContent.trim();
        })"""
    )


def services(page: Page):
    return page.get_by_test_id("message-list").get_by_test_id("service-line")


def scroll_gap(page: Page) -> float:
    """Pixels between the list's visible bottom and its content's end."""
    return page.get_by_test_id("message-list").evaluate("(l) => l.scrollHeight - l.scrollTop - l.clientHeight")


def scroll_to_top(page: Page) -> None:
    page.get_by_test_id("message-list").evaluate("(l) => { l.scrollTop = 0; l.dispatchEvent(new Event('scroll')); }")


# ---------------------------------------------------------------- service lines (defect 7)


def test_creation_join_and_leave_are_service_lines(server, new_page):
    base = server.base_url
    alice, bob, vera = new_page(), new_page(), new_page()
    sign_in(alice, base, "Алиса", 11001)
    sign_in(bob, base, "Борис", 11002)
    sign_in(vera, base, "Вера", 11003)

    conv_id = create_conversation(alice, "Служебные строки")
    # The server's first message is no bubble typed by the creator.
    expect(services(alice)).to_have_text(["Вы создали беседу"])
    expect(message(alice, "Создана беседа.")).to_have_count(0)
    expect(messages(alice)).to_have_count(0)
    # A centred line in small print, not a bubble.
    layout = services(alice).first.evaluate(
        """(el) => {
            const list = el.closest('[data-testid="message-list"]').getBoundingClientRect();
            const text = el.firstElementChild ? el.firstElementChild.getBoundingClientRect() : el.getBoundingClientRect();
            return {
                offCentre: Math.abs((text.left + text.right) / 2 - (list.left + list.right) / 2),
                width: text.width, listWidth: list.width,
                fontSize: parseFloat(getComputedStyle(el.firstElementChild || el).fontSize),
                bubbles: el.querySelectorAll('.bubble').length,
            };
        }"""
    )
    assert layout["bubbles"] == 0
    assert layout["offCentre"] < 12, layout
    assert layout["width"] < layout["listWidth"] * 0.8, layout
    assert layout["fontSize"] < 15, layout

    # A spectator reads who created it.
    vera.get_by_test_id("tab-new").click()
    conversation_item(vera, "new", conv_id).click()
    expect(vera.get_by_test_id("viewer-banner")).to_be_visible()
    expect(services(vera)).to_have_text(["Алиса создал(а) беседу"])
    expect(message(vera, "Создана беседа.")).to_have_count(0)

    # A join shows live for the members and the spectator, and for the one who joined.
    join(bob, conv_id)
    expect(services(bob)).to_have_text(["Алиса создал(а) беседу", "Вы вступили в беседу"])
    expect(services(alice)).to_have_text(["Вы создали беседу", "Борис вступил(а) в беседу"])
    expect(services(vera)).to_have_text(["Алиса создал(а) беседу", "Борис вступил(а) в беседу"])

    # In order with the messages around it; a leave the same.
    send(bob, "Всем привет")
    expect(message(alice, "Всем привет")).to_be_visible()
    bob.get_by_test_id("chat-leave").click()
    bob.get_by_test_id("dialog-ok").click()
    expect(bob.get_by_test_id("chat-empty")).to_be_visible()
    expected = ["Борис вступил(а) в беседу", "msg:Всем привет", "Борис покинул(а) беседу"]
    for page, created in ((alice, "Вы создали беседу"), (vera, "Алиса создал(а) беседу")):
        expect(services(page)).to_have_count(3)
        shown = [row.removeprefix("service:") for row in rows(page) if not row.startswith("date:")]
        assert shown == [created, *expected], shown
    send(alice, "Ушёл…")
    assert rows(alice)[-2:] == ["service:Борис покинул(а) беседу", "msg:Ушёл…"]

    # A message that merely says the same words later on stays a message.
    send(alice, "Создана беседа.")
    expect(message(alice, "Создана беседа.")).to_have_count(1)
    expect(services(alice)).to_have_count(3)


# ---------------------------------------------------------------- "↓ N новых"


def test_new_messages_button_while_scrolled_up(server, new_page):
    base = server.base_url
    alice, bob = new_page(viewport={"width": 1000, "height": 600}), new_page()
    sign_in(alice, base, "Алиса", 12001)
    sign_in(bob, base, "Борис", 12002)
    conv_id = create_conversation(alice, "Кнопка вниз")
    join(bob, conv_id)
    api_send(base, 12002, "Борис", conv_id, [f"Длинное {i}\n{TALL}" for i in range(8)])
    expect(message(alice, f"Длинное 7\n{TALL}")).to_be_visible()
    button = alice.get_by_test_id("new-messages-button")

    # At the bottom, new messages just show: no button.
    send(bob, "Видно сразу")
    expect(message(alice, "Видно сразу")).to_be_in_viewport()
    expect(button).to_be_hidden()

    # Scrolled up, each one below the visible area counts.
    scroll_to_top(alice)
    expect(message(alice, "Длинное 0\n" + TALL)).to_be_in_viewport()
    expect(button).to_have_text("↓")  # far up: a way back down even with nothing new
    send(bob, "Новое 1")
    expect(button).to_be_visible()
    expect(button).to_have_text("↓ 1 новое")
    send(bob, "Новое 2")
    send(bob, "Новое 3")
    expect(button).to_have_text("↓ 3 новых")
    assert scroll_gap(alice) > 200  # the list did not jump to the bottom
    expect(message(alice, "Новое 3")).not_to_be_in_viewport()

    # Clicking it goes to the bottom, and it goes away.
    button.click()
    expect(message(alice, "Новое 3")).to_be_in_viewport()
    expect(button).to_be_hidden()
    assert scroll_gap(alice) < 4

    # Scrolling down by hand clears it too.
    scroll_to_top(alice)
    send(bob, "Новое 4")
    expect(button).to_have_text("↓ 1 новое")
    alice.get_by_test_id("message-list").evaluate("(l) => { l.scrollTop = l.scrollHeight; }")
    expect(button).to_be_hidden()

    # One's own message always scrolls to the bottom.
    scroll_to_top(alice)
    send(alice, "Моё")
    expect(message(alice, "Моё")).to_be_in_viewport()
    expect(button).to_be_hidden()


# ---------------------------------------------------------------- "Новые сообщения"


def test_unread_separator_when_opening(server, new_page):
    base = server.base_url
    alice, bob = new_page(), new_page(viewport={"width": 1000, "height": 600})
    sign_in(alice, base, "Алиса", 13001)
    sign_in(bob, base, "Борис", 13002)
    conv_id = create_conversation(alice, "Непрочитанное")
    join(bob, conv_id)
    api_send(base, 13001, "Алиса", conv_id, [f"Прочитано {i}\n{TALL}" for i in range(4)])
    expect(message(bob, f"Прочитано 3\n{TALL}")).to_be_visible()

    # Bob looks elsewhere while six tall messages come in.
    bob.get_by_test_id("global-chat-item").click()
    expect(bob.get_by_test_id("chat-title")).to_have_text("Анонимный чат")
    api_send(base, 13001, "Алиса", conv_id, [f"Непрочитано {i}\n{TALL}" for i in range(6)])
    expect(conversation_item(bob, "joined", conv_id).get_by_test_id("unread-badge")).to_have_attribute("data-count", "6")

    open_joined(bob, conv_id)
    separator = bob.get_by_test_id("unread-separator")
    expect(separator).to_have_text("Новые сообщения")
    expect(message(bob, f"Непрочитано 5\n{TALL}")).to_be_visible()
    shown = rows(bob)
    assert shown.count("unread:Новые сообщения") == 1
    at = shown.index("unread:Новые сообщения")
    assert shown[at - 1] == f"msg:Прочитано 3\n{TALL}" and shown[at + 1] == f"msg:Непрочитано 0\n{TALL}", shown
    # Opened at the first unread message, not at the bottom.
    expect(separator).to_be_in_viewport()
    expect(message(bob, f"Непрочитано 0\n{TALL}")).to_be_in_viewport()
    expect(message(bob, f"Непрочитано 5\n{TALL}")).not_to_be_in_viewport()

    # It stays put while the conversation is open...
    send(alice, "Ещё одно")
    expect(message(bob, "Ещё одно")).to_be_attached()
    assert rows(bob).count("unread:Новые сообщения") == 1
    # ...and is gone once everything was read.
    bob.get_by_test_id("global-chat-item").click()
    open_joined(bob, conv_id)
    expect(message(bob, "Ещё одно")).to_be_in_viewport()
    expect(separator).to_have_count(0)

    # The count after a reload comes from the server: the same mark.
    bob.get_by_test_id("global-chat-item").click()
    api_send(base, 13001, "Алиса", conv_id, ["После перезагрузки 1", "После перезагрузки 2"])
    expect(conversation_item(bob, "joined", conv_id).get_by_test_id("unread-badge")).to_have_attribute("data-count", "2")
    bob.reload()
    expect(bob.get_by_test_id("connection-status")).to_have_attribute("data-state", "online")
    open_joined(bob, conv_id)
    expect(separator).to_be_visible()
    shown = rows(bob)
    at = shown.index("unread:Новые сообщения")
    assert shown[at - 1 : at + 2] == ["msg:Ещё одно", "unread:Новые сообщения", "msg:После перезагрузки 1"], shown


def test_unread_separator_on_an_earlier_page(server, new_page):
    base = server.base_url
    alice, bob = new_page(), new_page(viewport={"width": 1000, "height": 600})
    sign_in(alice, base, "Алиса", 13101)
    sign_in(bob, base, "Борис", 13102)
    conv_id = create_conversation(alice, "Много непрочитанного")
    join(bob, conv_id)
    send(bob, "Прочитал")
    bob.get_by_test_id("global-chat-item").click()
    expect(bob.get_by_test_id("chat-title")).to_have_text("Анонимный чат")
    # More unread than the first page (100) holds.
    api_send(base, 13101, "Алиса", conv_id, [f"Пачка {i}" for i in range(1, 106)])
    badge = conversation_item(bob, "joined", conv_id).get_by_test_id("unread-badge")
    expect(badge).to_have_attribute("data-count", "105")

    open_joined(bob, conv_id)
    # The page above is fetched to find the first unread, and the list opens there.
    separator = bob.get_by_test_id("unread-separator")
    expect(separator).to_be_in_viewport()
    expect(message(bob, "Пачка 1")).to_be_in_viewport()
    shown = rows(bob)
    at = shown.index("unread:Новые сообщения")
    assert shown[at - 1 : at + 2] == ["msg:Прочитал", "unread:Новые сообщения", "msg:Пачка 1"], shown


def test_unread_mark_for_what_arrived_while_away(server, new_page):
    base = server.base_url
    alice, bob = new_page(), new_page(viewport={"width": 1000, "height": 600})
    sign_in(alice, base, "Алиса", 17001)
    sign_in(bob, base, "Борис", 17002)
    conv_id = create_conversation(alice, "Пока меня не было")
    join(bob, conv_id)
    send(alice, "При мне")
    expect(message(bob, "При мне")).to_be_in_viewport()

    # The chat stays open in a background tab while six tall messages come in.
    set_visible(bob, False)
    api_send(base, 17001, "Алиса", conv_id, [f"Без меня {i}\n{TALL}" for i in range(6)])
    expect(message(bob, f"Без меня 5\n{TALL}")).to_be_attached()
    set_visible(bob, True)

    # Back: the mark at the first one missed, in view; the rest waits below.
    separator = bob.get_by_test_id("unread-separator")
    expect(separator).to_have_text("Новые сообщения")
    shown = rows(bob)
    at = shown.index("unread:Новые сообщения")
    assert shown[at - 1 : at + 2] == ["msg:При мне", "unread:Новые сообщения", f"msg:Без меня 0\n{TALL}"], shown
    expect(separator).to_be_in_viewport()
    expect(message(bob, f"Без меня 0\n{TALL}")).to_be_in_viewport()
    expect(message(bob, f"Без меня 5\n{TALL}")).not_to_be_in_viewport()
    expect(bob.get_by_test_id("new-messages-button")).to_be_visible()
    bob.get_by_test_id("new-messages-button").click()
    expect(message(bob, f"Без меня 5\n{TALL}")).to_be_in_viewport()

    # Seen live, nothing moves the mark.
    send(alice, "Снова при мне")
    expect(message(bob, "Снова при мне")).to_be_in_viewport()
    assert rows(bob).count("unread:Новые сообщения") == 1
    assert rows(bob).index("unread:Новые сообщения") == at


# ---------------------------------------------------------------- groups, colours, dates


def author_and_avatar(page: Page, text: str) -> tuple[int, int]:
    found = message(page, text)
    return found.get_by_test_id("message-author").count(), found.get_by_test_id("message-avatar").count()


def test_consecutive_messages_grouped_across_pages_and_live(server, new_page):
    base = server.base_url
    alice, bob = new_page(), new_page()
    sign_in(alice, base, "Алиса", 14001)
    sign_in(bob, base, "Борис", 14002)
    conv_id = create_conversation(alice, "Группы сообщений")
    join(bob, conv_id)
    # More than one page (100) of Alice's, in a row.
    api_send(base, 14001, "Алиса", conv_id, [f"Пачка {i}" for i in range(1, 106)])
    bob.get_by_test_id("global-chat-item").click()
    open_joined(bob, conv_id)
    expect(message(bob, "Пачка 105")).to_be_visible()
    expect(message(bob, "Пачка 5")).to_have_count(0)
    # One name (on the first) and one avatar (by the last) for the whole run.
    author = bob.get_by_test_id("message-list").get_by_test_id("message-author")
    avatar = bob.get_by_test_id("message-list").get_by_test_id("message-avatar")
    expect(author).to_have_count(1)
    expect(avatar).to_have_count(1)
    assert author_and_avatar(bob, "Пачка 6") == (1, 0)
    assert author_and_avatar(bob, "Пачка 105") == (0, 1)

    # Scrolling up fetches the earlier page, which joins the run: still one name, now on its first message.
    scroll_to_top(bob)
    expect(message(bob, "Пачка 1")).to_be_attached()
    expect(bob.get_by_test_id("load-earlier")).to_have_count(0)
    expect(author).to_have_count(1)
    expect(avatar).to_have_count(1)
    assert author_and_avatar(bob, "Пачка 1") == (1, 0)
    assert author_and_avatar(bob, "Пачка 6") == (0, 0)
    shown = rows(bob)
    assert shown[:3] == ["date:Сегодня", "service:Алиса создал(а) беседу", "msg:Пачка 1"], shown[:4]
    assert shown.count("date:Сегодня") == 1

    # Live: Bob's own message breaks the run; Alice's next ones start a new group,
    # whose avatar moves down as it grows.
    send(bob, "Перебиваю")
    send(alice, "Снова я")
    expect(message(bob, "Снова я")).to_be_visible()
    assert author_and_avatar(bob, "Снова я") == (1, 1)
    assert author_and_avatar(bob, "Пачка 105") == (0, 1)
    send(alice, "И ещё")
    expect(message(bob, "И ещё").get_by_test_id("message-avatar")).to_have_count(1)
    expect(message(bob, "Снова я").get_by_test_id("message-avatar")).to_have_count(0)
    assert author_and_avatar(bob, "Снова я") == (1, 0)
    assert author_and_avatar(bob, "И ещё") == (0, 1)
    expect(author).to_have_count(2)
    expect(avatar).to_have_count(2)
    # Continuations stay aligned with the first message of their group.
    lefts = [message(bob, text).get_by_test_id("message-text").bounding_box()["x"] for text in ("Снова я", "И ещё")]
    assert abs(lefts[0] - lefts[1]) < 1, lefts
    assert rows(bob).count("date:Сегодня") == 1


def test_a_stable_colour_per_user(server, new_page):
    base = server.base_url
    alice, bob = new_page(), new_page()
    sign_in(alice, base, "Алиса", 15001)
    sign_in(bob, base, "Борис", 15002)
    first = create_conversation(alice, "Цвета раз")
    join(bob, first)
    send(alice, "Алиса в первой")
    alice.get_by_test_id("global-chat-item").click()
    second = create_conversation(alice, "Цвета два")
    join(bob, second)
    send(bob, "Борис во второй")
    send(alice, "Алиса во второй")

    def name_colour(page: Page, text: str) -> str:
        return message(page, text).get_by_test_id("message-author").evaluate("(el) => getComputedStyle(el).color")

    def user_colours(page: Page, text: str) -> tuple[str, str]:
        """The colour a name is drawn from (shaded to read on its bubble), and the avatar's."""
        found = message(page, text)
        name = found.get_by_test_id("message-author").evaluate("(el) => el.style.getPropertyValue('--user-color')")
        picture = found.get_by_test_id("message-avatar").evaluate("(el) => getComputedStyle(el).backgroundColor")
        return name, picture

    def computed(page: Page, colour: str) -> str:
        return page.evaluate(
            "(c) => { const el = document.createElement('i'); el.style.color = c; document.body.append(el);"
            " const v = getComputedStyle(el).color; el.remove(); return v; }",
            colour,
        )

    in_second = name_colour(bob, "Алиса во второй")
    base_colour, avatar_colour = user_colours(bob, "Алиса во второй")
    assert base_colour and computed(bob, base_colour) == avatar_colour
    assert in_second != computed(bob, "var(--accent)")  # not every name in the one accent colour
    assert name_colour(alice, "Борис во второй") != in_second  # the ids were picked to hash apart

    open_joined(bob, first)
    expect(message(bob, "Алиса в первой")).to_be_visible()
    assert name_colour(bob, "Алиса в первой") == in_second
    bob.reload()
    expect(bob.get_by_test_id("connection-status")).to_have_attribute("data-state", "online")
    open_joined(bob, first)
    assert name_colour(bob, "Алиса в первой") == in_second
    # The member list of the info panel: the same colour again.
    bob.get_by_test_id("chat-info").click()
    member = bob.locator('[data-testid="info-member"][data-user-id="15001"] .avatar')
    assert member.evaluate("(el) => getComputedStyle(el).backgroundColor") == avatar_colour


def test_date_separators(server, new_page, browser):
    base = server.base_url
    alice = new_page()
    sign_in(alice, base, "Алиса", 16001)
    create_conversation(alice, "Даты")
    send(alice, "Сегодняшнее")
    assert rows(alice) == ["date:Сегодня", "service:Вы создали беседу", "msg:Сегодняшнее"]

    # The days themselves, by the browser's local date (Vladivostok is UTC+10).
    context = browser.new_context(locale="ru-RU", timezone_id="Asia/Vladivostok")
    try:
        page = context.new_page()
        page.goto(base + "/")
        labels = page.evaluate(
            """async () => {
                const { formatDay } = await import('/dom.js');
                const now = new Date(2026, 10, 25, 0, 30);  // 25 Nov 2026, 00:30 local
                const at = (...args) => new Date(...args).getTime() / 1000;
                return [
                    formatDay(at(2026, 10, 25, 0, 5), now),
                    formatDay(at(2026, 10, 24, 23, 59), now),
                    formatDay(at(2026, 10, 12, 9, 0), now),
                    formatDay(at(2026, 2, 1, 9, 0), now),
                    formatDay(at(2025, 11, 31, 23, 0), now),
                    formatDay(Date.UTC(2026, 10, 11, 20, 0) / 1000, now),
                ];
            }"""
        )
        assert labels == ["Сегодня", "Вчера", "12 ноября", "1 марта", "31 декабря 2025", "12 ноября"]

        # Separators and groups over synthetic days: a new day or a long pause starts a new group.
        plan = page.evaluate(
            """async () => {
                const { buildTimeline } = await import('/timeline.js');
                const at = (d, h, m) => new Date(2026, 10, d, h, m).getTime() / 1000;
                const msg = (id, user_id, time) => ({ id, user_id, name: 'u' + user_id, message: 'm' + id, time });
                const rows = buildTimeline({
                    messages: [msg(1, 7, at(23, 10, 0)), msg(2, 7, at(23, 10, 4)), msg(3, 7, at(23, 10, 10)),
                               msg(4, 7, at(23, 23, 59)), msg(5, 7, at(24, 0, 1)), msg(6, 8, at(24, 0, 2))],
                    now: new Date(2026, 10, 24, 12, 0),
                });
                return rows.map((r) => r.type === 'message' ? `${r.message.id}${r.groupStart ? '<' : ''}${r.groupEnd ? '>' : ''}` : `${r.type}:${r.label || ''}`);
            }"""
        )
        assert plan == ["date:Вчера", "1<", "2>", "3<>", "4<>", "date:Сегодня", "5<>", "6<>"], plan

        # The creation message only as the conversation's very first; live events after what they followed.
        plans = page.evaluate(
            """async () => {
                const { buildTimeline } = await import('/timeline.js');
                const t = new Date(2026, 10, 24, 12, 0).getTime() / 1000;
                const messages = [
                    { id: 1, user_id: 7, name: 'А', message: 'Создана беседа.', time: t },
                    { id: 2, user_id: 7, name: 'А', message: 'Привет', time: t + 1 },
                ];
                const events = [{ kind: 'joined', userId: 8, name: 'Б', time: t + 2, afterId: 1, seq: 1 }];
                const show = (rows) => rows.map((r) => r.type === 'message' ? `msg:${r.message.message}` : `${r.type}:${r.kind || r.label}`);
                return [
                    show(buildTimeline({ messages, events, startReached: true, creatorId: 7, now: new Date(2026, 10, 24, 13, 0) })),
                    show(buildTimeline({ messages, events, startReached: false, creatorId: 7, now: new Date(2026, 10, 24, 13, 0) })),
                    show(buildTimeline({ messages, startReached: true, creatorId: 8, now: new Date(2026, 10, 24, 13, 0) })),
                ];
            }"""
        )
        assert plans == [
            ["date:Сегодня", "service:created", "service:joined", "msg:Привет"],
            ["date:Сегодня", "msg:Создана беседа.", "service:joined", "msg:Привет"],
            ["date:Сегодня", "msg:Создана беседа.", "msg:Привет"],
        ], plans
    finally:
        context.close()
