"""The web client on a phone inside VK: nothing wider than the screen, nothing
under VK's own buttons or the phone's notch and home indicator, VK's theme,
and confirm dialogs that do not destroy on a stray Enter.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.test_web_client import conversation_item, create_conversation, send, sign_in

PHONE = {"width": 375, "height": 740}
# VK draws its menu and close buttons over the top-right corner of a mini app
# on phones: about 90 px wide (a capsule of two buttons and its margin).
VK_CORNER = 90
LONG_TEXT = "Анонимно с телефона: довольно длинное сообщение, чтобы проверить превью в списке"


def page_width(page: Page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def box(page: Page, testid: str) -> dict:
    """The element's rectangle in CSS pixels of the viewport."""
    return page.get_by_test_id(testid).evaluate(
        "el => { const r = el.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }"
    )


def assert_sidebar_fits(page: Page) -> None:
    expect(page.get_by_test_id("sidebar")).to_be_visible()
    assert page_width(page) <= PHONE["width"]
    for testid in ("tab-joined", "tab-new", "sign-out", "create-conversation", "global-chat-item"):
        rect = box(page, testid)
        assert rect["left"] >= 0 and rect["right"] <= PHONE["width"], (testid, rect)


# ---------------------------------------------------------------- defect 1: nothing wider than the phone


def test_long_anonymous_message_keeps_the_sidebar_on_screen(chat_server, new_page):
    phone = new_page(viewport=PHONE)
    sign_in(phone, chat_server.base_url, "Телефон", 7001)
    phone.get_by_test_id("global-chat-item").click()
    send(phone, LONG_TEXT)
    assert page_width(phone) <= PHONE["width"]

    phone.get_by_test_id("chat-back").click()
    expect(phone.get_by_test_id("global-preview")).to_have_text(LONG_TEXT)
    assert_sidebar_fits(phone)


def test_long_last_message_of_a_joined_conversation_keeps_the_sidebar_on_screen(chat_server, new_page):
    phone = new_page(viewport=PHONE)
    sign_in(phone, chat_server.base_url, "Телефон", 7002)
    conv_id = create_conversation(phone, "Длинные разговоры")
    send(phone, LONG_TEXT)
    assert page_width(phone) <= PHONE["width"]

    phone.get_by_test_id("chat-back").click()
    preview = conversation_item(phone, "joined", conv_id).get_by_test_id("conversation-preview")
    expect(preview).to_have_text(LONG_TEXT)
    assert_sidebar_fits(phone)
    rect = conversation_item(phone, "joined", conv_id).evaluate("el => el.getBoundingClientRect().right")
    assert rect <= PHONE["width"]


# ---------------------------------------------------------------- defect 6: the safe button has the focus


def test_leave_and_delete_dialogs_start_on_cancel(chat_server, new_page):
    page = new_page()
    sign_in(page, chat_server.base_url, "Осторожная", 7003)
    conv_id = create_conversation(page, "Не удалять")
    dialog = page.get_by_test_id("confirm-dialog")

    for action in ("chat-leave", "chat-delete"):
        page.get_by_test_id(action).click()
        expect(dialog).to_be_visible()
        expect(page.get_by_test_id("dialog-cancel")).to_be_focused()
        page.keyboard.press("Enter")
        expect(dialog).to_have_count(0)
        expect(conversation_item(page, "joined", conv_id)).to_have_count(1)
        expect(page.get_by_test_id(action)).to_be_visible()

        page.get_by_test_id(action).click()
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)
        expect(conversation_item(page, "joined", conv_id)).to_have_count(1)

    # The destructive button still works when chosen on purpose.
    page.get_by_test_id("chat-leave").click()
    page.get_by_test_id("dialog-ok").click()
    expect(conversation_item(page, "joined", conv_id)).to_have_count(0)


# ---------------------------------------------------------------- defect 9: safe areas and VK's corner


def test_phone_header_keeps_clear_of_vk_buttons(chat_server, new_page):
    phone = new_page(viewport=PHONE)
    sign_in(phone, chat_server.base_url, "Создатель", 7004)
    create_conversation(phone, "Углы VK")
    clear_right = PHONE["width"] - VK_CORNER

    head = phone.locator(".chat-head")
    controls = head.locator("button:visible")
    assert controls.count() >= 1
    for i in range(controls.count()):
        right = controls.nth(i).evaluate("el => el.getBoundingClientRect().right")
        assert right <= clear_right, (controls.nth(i).get_attribute("data-testid"), right)

    # The conversation's info, and leaving and deleting, stay one tap away.
    phone.get_by_test_id("chat-title").click()
    panel = phone.get_by_test_id("info-panel")
    expect(panel).to_be_visible()
    assert box(phone, "info-close")["right"] <= clear_right
    for testid in ("info-leave", "info-delete"):
        expect(phone.get_by_test_id(testid)).to_be_visible()
        rect = box(phone, testid)
        assert rect["left"] >= 0 and rect["right"] <= PHONE["width"], (testid, rect)
    assert page_width(phone) <= PHONE["width"]

    phone.get_by_test_id("info-leave").click()
    expect(phone.get_by_test_id("confirm-dialog")).to_be_visible()
    phone.get_by_test_id("dialog-ok").click()
    expect(phone.get_by_test_id("sidebar")).to_be_visible()
    expect(conversation_item(phone, "joined", name="Углы VK")).to_have_count(0)


def test_safe_area_insets_are_padded(chat_server, new_page):
    phone = new_page(viewport=PHONE)
    # An iPhone's notch and home indicator, as Chromium emulates them for env(safe-area-inset-*).
    cdp = phone.context.new_cdp_session(phone)
    cdp.send("Emulation.setSafeAreaInsetsOverride", {"insets": {"top": 47, "bottom": 34, "left": 0, "right": 0}})
    sign_in(phone, chat_server.base_url, "Айфон", 7005)

    assert box(phone, "me-name")["top"] >= 47
    assert box(phone, "create-conversation")["bottom"] <= PHONE["height"] - 34

    phone.get_by_test_id("global-chat-item").click()
    assert box(phone, "chat-back")["top"] >= 47
    assert box(phone, "composer-input")["bottom"] <= PHONE["height"] - 34
    assert box(phone, "composer-send")["bottom"] <= PHONE["height"] - 34


# ---------------------------------------------------------------- VK's theme


def vk_config(page: Page, **data) -> None:
    """What VK's web client posts to the mini app's frame when its look changes."""
    page.evaluate("data => window.postMessage({type: 'VKWebAppUpdateConfig', data}, '*')", data)


def theme_of(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--surface').trim()")


def test_theme_follows_vk_appearance(chat_server, new_page):
    page = new_page()  # the OS (Chromium's default) is light
    sign_in(page, chat_server.base_url, "Тёмная", 7006)
    light = theme_of(page)

    vk_config(page, scheme="space_gray", appearance="dark")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    dark = theme_of(page)
    assert dark != light

    vk_config(page, scheme="bright_light", appearance="light")
    expect(page.locator("html")).to_have_attribute("data-theme", "light")
    assert theme_of(page) == light

    # Older clients send only the scheme.
    vk_config(page, scheme="space_gray")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert theme_of(page) == dark

    # Android's VK reports the insets itself (its WebView has no env() for them).
    vk_config(page, scheme="space_gray", insets={"top": 24, "bottom": 16, "left": 0, "right": 0})
    expect(page.get_by_test_id("me-name")).to_be_visible()
    page.wait_for_function("getComputedStyle(document.documentElement).getPropertyValue('--safe-top').trim() === '24px'")
    assert box(page, "me-name")["top"] >= 24 + 14
    assert box(page, "create-conversation")["bottom"] <= 800 - 16 - 12
