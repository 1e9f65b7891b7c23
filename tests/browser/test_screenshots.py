"""Every main screen of the web client on a phone (375×740) and a desktop
(1280×800): nothing may be wider than the screen. The screenshots go to
artifacts/screenshots/; with CHAT_UPDATE_SCREENSHOT=1 also to docs/screenshots/
(<screen>-phone.png, <screen>-desktop.png), which README.md shows.
"""

from __future__ import annotations

import os
import shutil

from playwright.sync_api import Page, expect

from tests.browser.test_web_client import REPO, conversation_item, create_conversation, message, send, shot, sign_in

SIZES = {"phone": {"width": 375, "height": 740}, "desktop": {"width": 1280, "height": 800}}
# No emoji: the test machine may have no colour emoji font, and tofu would show.
CATS = "Любители котиков"


def join(page: Page, conv_id: str) -> None:
    page.get_by_test_id("tab-new").click()
    conversation_item(page, "new", conv_id).get_by_test_id("conversation-join").click()
    expect(page.get_by_test_id("composer-input")).to_be_visible()


def fits(page: Page, size: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= SIZES[size]["width"], f"{size}: the page is {width} px wide"


def test_main_screens(chat_server, new_page, artifacts_dir):
    base = chat_server.base_url
    out = artifacts_dir / "screenshots"
    out.mkdir(exist_ok=True)
    taken = []

    def capture(page: Page, screen: str, size: str) -> None:
        fits(page, size)
        path = out / f"{screen}-{size}.png"
        shot(page, path)
        taken.append(path)

    # Three people talk in a few conversations and in the anonymous chat.
    alice, bob, vera = new_page(), new_page(), new_page()
    sign_in(alice, base, "Алиса", 2001)
    sign_in(bob, base, "Борис", 2002)
    sign_in(vera, base, "Вера", 2003)
    hikes = create_conversation(bob, "Походы выходного дня")
    send(bob, "В субботу идём на Лосиный остров, кто с нами?")
    books = create_conversation(vera, "Книжный клуб")
    send(vera, "Дочитали «Мастера и Маргариту»? Обсуждаем в четверг.")
    cats = create_conversation(alice, CATS)
    for page, conv_id in ((bob, cats), (vera, cats), (alice, hikes), (alice, books)):
        join(page, conv_id)
    for page in (alice, bob, vera):
        conversation_item(page, "joined", cats).click()
        expect(page.get_by_test_id("chat-title")).to_have_text(CATS)
    send(alice, "Всем привет! Делитесь фотографиями своих котиков")
    send(bob, "Мой Барсик сегодня опять уронил ёлку")
    send(vera, "А моя Муся спит на клавиатуре, пока я работаю. Пишу вам с телефона, она заняла ноутбук целиком.")
    send(alice, "Классика! Коты всегда знают, где теплее всего")
    for page, text in ((bob, "Кто-нибудь знает хорошую ветклинику рядом с центром?"), (vera, "Анонимно: я тоже хочу котика!")):
        page.get_by_test_id("global-chat-item").click()
        send(page, text)

    for size, viewport in SIZES.items():
        page = new_page(viewport=viewport)
        page.goto(base + "/")
        expect(page.get_by_test_id("signin-form")).to_be_visible()
        page.get_by_test_id("signin-name").fill("Алиса")
        page.get_by_test_id("signin-user-id").fill("2001")
        capture(page, "signin", size)

        page.get_by_test_id("signin-submit").click()
        expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "online")
        expect(conversation_item(page, "joined")).to_have_count(3)
        capture(page, "conversations", size)

        conversation_item(page, "joined", cats).click()
        expect(message(page, "Классика! Коты всегда знают, где теплее всего")).to_be_visible()
        capture(page, "conversation", size)

        page.get_by_test_id("chat-title").click()
        expect(page.get_by_test_id("info-member")).to_have_count(3)
        capture(page, "info", size)
        page.get_by_test_id("info-close").click()

        if size == "phone":
            page.get_by_test_id("chat-back").click()
        page.get_by_test_id("global-chat-item").click()
        expect(message(page, "Анонимно: я тоже хочу котика!")).to_be_visible()
        capture(page, "global", size)

    if os.environ.get("CHAT_UPDATE_SCREENSHOT"):
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(exist_ok=True)
        for path in taken:
            shutil.copyfile(path, docs / path.name)
