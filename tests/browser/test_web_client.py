"""End-to-end tests of the web client (web/) against a real server process.

Every user is a separate browser context, so each has its own sessionStorage
and WebSocket. Screenshots go to artifacts/; the README's pictures come from
test_screenshots.py (CHAT_UPDATE_SCREENSHOT=1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
import time
import urllib.parse
from pathlib import Path

from playwright.sync_api import Page, expect

REPO = Path(__file__).resolve().parents[2]
# Live updates cross a real server and several browsers: allow a busy CI box time.
expect.set_options(timeout=10_000)

CONVERSATION = "Беседа о котиках 🐈"


# ---------------------------------------------------------------- helpers


def sign_in(page: Page, base_url: str, name: str, user_id: int) -> None:
    page.goto(base_url + "/")
    expect(page.get_by_test_id("signin-form")).to_be_visible()
    page.get_by_test_id("signin-name").fill(name)
    page.get_by_test_id("signin-user-id").fill(str(user_id))
    page.get_by_test_id("signin-submit").click()
    wait_online(page)
    expect(page.get_by_test_id("me-name")).to_have_text(name)


def wait_online(page: Page, timeout: float = 10_000) -> None:
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "online", timeout=timeout)


def conversation_item(page: Page, list_name: str, conversation_id: str | None = None, name: str | None = None):
    selector = f'[data-testid="conversation-item"][data-list="{list_name}"]'
    if conversation_id is not None:
        selector += f'[data-id="{conversation_id}"]'
    items = page.locator(selector)
    if name is not None:
        items = items.filter(has=page.get_by_test_id("conversation-name").get_by_text(name, exact=True))
    return items


def messages(page: Page):
    return page.get_by_test_id("message-list").get_by_test_id("message")


def message(page: Page, text: str):
    return messages(page).filter(has=page.get_by_test_id("message-text").get_by_text(text, exact=True))


def send(page: Page, text: str) -> None:
    box = page.get_by_test_id("composer-input")
    box.fill(text)
    box.press("Enter")
    expect(message(page, text)).to_have_attribute("data-mine", "true")
    expect(box).to_have_value("")
    # Shown at once while it is being sent: wait for the server's answer (a
    # reload before it would leave the text unsent, by design).
    expect(message(page, text).and_(page.locator(".pending"))).to_have_count(0)


def create_conversation(page: Page, name: str) -> str:
    """Create a conversation through the dialog; return its id once it is in the "joined" list."""
    page.get_by_test_id("create-conversation").click()
    page.get_by_test_id("create-name-input").fill(name)
    page.get_by_test_id("dialog-ok").click()
    expect(page.get_by_test_id("chat-title")).to_have_text(name)
    item = conversation_item(page, "joined", name=name)
    expect(item).to_have_count(1)
    return item.get_attribute("data-id")


def set_visible(page: Page, visible: bool) -> None:
    """What the browser does when the tab goes to the background or comes back."""
    page.evaluate(
        """visible => {
          const state = visible ? 'visible' : 'hidden';
          Object.defineProperty(document, 'visibilityState', { get: () => state, configurable: true });
          Object.defineProperty(document, 'hidden', { get: () => !visible, configurable: true });
          document.dispatchEvent(new Event('visibilitychange'));
        }""",
        visible,
    )


def shot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), animations="disabled")


def vk_sign(params: dict[str, str], secret: str) -> str:
    """VK's launch-parameter signature, computed independently of the server's code."""
    vk_params = sorted((k, v) for k, v in params.items() if k.startswith("vk_"))
    digest = hmac.new(secret.encode(), urllib.parse.urlencode(vk_params).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_vk_sign_matches_official_vector():
    query = (
        "vk_user_id=494075&vk_app_id=6736218&vk_is_app_user=1&vk_are_notifications_enabled=1"
        "&vk_language=ru&vk_access_token_settings=&vk_platform=android"
    )
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    assert vk_sign(params, "wvl68m4dR1UpLrVRli") == "htQFduJpLxz7ribXRZpDFUH-XEUhC9rBPTJkjUFEkRA"


# ---------------------------------------------------------------- conversations


def test_conversation_lifecycle(chat_server, new_page, artifacts_dir):
    base = chat_server.base_url
    alice, bob, vera = new_page(), new_page(), new_page()
    sign_in(alice, base, "Алиса", 1001)
    sign_in(bob, base, "Борис", 1002)
    sign_in(vera, base, "Вера", 1003)

    # Alice creates a conversation: it opens, with the server's first message as a service line.
    alice.get_by_test_id("create-conversation").click()
    alice.get_by_test_id("create-name-input").fill(CONVERSATION)
    alice.get_by_test_id("dialog-ok").click()
    expect(alice.get_by_test_id("chat-title")).to_have_text(CONVERSATION)
    expect(alice.get_by_test_id("service-line")).to_have_text("Вы создали беседу")
    mine = conversation_item(alice, "joined", name=CONVERSATION)
    expect(mine).to_have_count(1)
    conv_id = mine.get_attribute("data-id")
    expect(alice.get_by_test_id("chat-delete")).to_be_visible()

    # Bob sees it among the new ones (live) and joins.
    bob.get_by_test_id("tab-new").click()
    bob_new = conversation_item(bob, "new", conv_id)
    expect(bob_new).to_be_visible()
    expect(bob_new.get_by_test_id("conversation-name")).to_have_text(CONVERSATION)
    bob_new.get_by_test_id("conversation-join").click()
    expect(bob.get_by_test_id("chat-title")).to_have_text(CONVERSATION)
    expect(bob.get_by_test_id("composer-input")).to_be_visible()
    expect(conversation_item(bob, "joined", conv_id)).to_be_visible()
    expect(conversation_item(bob, "new", conv_id)).to_have_count(0)
    expect(bob.get_by_test_id("chat-delete")).to_have_count(0)  # not the creator
    expect(alice.get_by_test_id("chat-members")).to_have_attribute("data-count", "2")

    # Messages both ways, with the sender's name on the other side.
    send(alice, "Привет, Борис!")
    got = message(bob, "Привет, Борис!")
    expect(got).to_have_attribute("data-mine", "false")
    expect(got.get_by_test_id("message-author")).to_have_text("Алиса")
    send(bob, "Привет, Алиса! 👋")
    got = message(alice, "Привет, Алиса! 👋")
    expect(got.get_by_test_id("message-author")).to_have_text("Борис")

    # While Bob looks elsewhere, Alice's messages count as unread for him.
    bob.get_by_test_id("global-chat-item").click()
    expect(bob.get_by_test_id("chat-title")).to_have_text("Анонимный чат")
    send(alice, "Ты тут?")
    send(alice, "Ау!")
    bob_item = conversation_item(bob, "joined", conv_id)
    expect(bob_item.get_by_test_id("unread-badge")).to_have_attribute("data-count", "2")
    expect(bob_item.get_by_test_id("unread-badge")).to_be_visible()
    expect(bob_item.get_by_test_id("conversation-preview")).to_have_text("Ау!")
    expect(bob.get_by_test_id("tab-joined-badge")).to_have_attribute("data-count", "2")
    shot(bob, artifacts_dir / "bob-unread.png")
    bob_item.click()
    expect(message(bob, "Ау!")).to_be_visible()
    expect(bob_item.get_by_test_id("unread-badge")).to_have_attribute("data-count", "0")
    expect(bob_item.get_by_test_id("unread-badge")).to_be_hidden()
    # The read was stored on the server: a reload still shows no unread.
    bob.reload()
    wait_online(bob)
    expect(bob.get_by_test_id("me-name")).to_have_text("Борис")  # sessionStorage kept the sign-in
    expect(conversation_item(bob, "joined", conv_id).get_by_test_id("unread-badge")).to_have_attribute(
        "data-count", "0"
    )
    conversation_item(bob, "joined", conv_id).click()
    expect(message(bob, "Ау!")).to_be_visible()

    # Vera watches as a spectator: read-only, live, and counted on Alice's screen.
    vera.get_by_test_id("tab-new").click()
    conversation_item(vera, "new", conv_id).click()
    expect(vera.get_by_test_id("viewer-banner")).to_be_visible()
    expect(vera.get_by_test_id("composer-input")).to_have_count(0)
    expect(message(vera, "Привет, Борис!")).to_be_visible()
    expect(alice.get_by_test_id("chat-viewers")).to_have_attribute("data-count", "1")
    expect(conversation_item(alice, "joined", conv_id).get_by_test_id("conversation-viewers")).to_have_attribute(
        "data-count", "1"
    )
    expect(conversation_item(vera, "new", conv_id).get_by_test_id("conversation-viewers")).to_have_attribute(
        "data-count", "1"
    )
    send(alice, "Вера, это тебе видно?")
    expect(message(vera, "Вера, это тебе видно?")).to_be_visible()
    # Grouped with Alice's two before it: the name heads the group.
    expect(message(vera, "Ты тут?").get_by_test_id("message-author")).to_have_text("Алиса")
    expect(message(vera, "Вера, это тебе видно?").get_by_test_id("message-author")).to_have_count(0)

    # Conversation info with its members.
    alice.get_by_test_id("chat-info").click()
    info = alice.get_by_test_id("info-panel")
    expect(info.get_by_test_id("info-member")).to_have_count(2)
    expect(info.locator('[data-testid="info-member"][data-user-id="1002"]')).to_contain_text("Борис")
    expect(info.get_by_test_id("info-viewers-count")).to_have_attribute("data-count", "1")
    shot(alice, artifacts_dir / "alice-conversation.png")
    shot(vera, artifacts_dir / "vera-spectator.png")

    # Leaving the view (stopView) drops the count; viewing again raises it.
    vera.get_by_test_id("global-chat-item").click()
    expect(alice.get_by_test_id("chat-viewers")).to_have_attribute("data-count", "0")
    expect(info.get_by_test_id("info-viewers-count")).to_have_attribute("data-count", "0")
    conversation_item(vera, "new", conv_id).click()
    expect(vera.get_by_test_id("viewer-banner")).to_be_visible()
    expect(alice.get_by_test_id("chat-viewers")).to_have_attribute("data-count", "1")

    # Only the creator may delete; everyone's screens drop it.
    alice.get_by_test_id("chat-delete").click()
    expect(alice.get_by_test_id("confirm-dialog")).to_be_visible()
    alice.get_by_test_id("dialog-ok").click()
    expect(alice.get_by_test_id("chat-empty")).to_be_visible()
    expect(alice.locator(f'[data-testid="conversation-item"][data-id="{conv_id}"]')).to_have_count(0)
    for page in (bob, vera):
        expect(page.locator(f'[data-testid="conversation-item"][data-id="{conv_id}"]')).to_have_count(0)
        expect(page.get_by_test_id("chat-empty")).to_be_visible()
        expect(page.get_by_test_id("toast").filter(has_text="удалена")).to_be_visible()


def test_join_from_spectator_and_leave(chat_server, new_page):
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    sign_in(alice, base, "Алиса", 2001)
    sign_in(bob, base, "Борис", 2002)

    alice.get_by_test_id("create-conversation").click()
    alice.get_by_test_id("create-name-input").fill("Книжный клуб")
    alice.get_by_test_id("dialog-ok").click()
    expect(alice.get_by_test_id("chat-title")).to_have_text("Книжный клуб")
    conv_id = conversation_item(alice, "joined", name="Книжный клуб").get_attribute("data-id")
    alice.get_by_test_id("chat-info").click()
    expect(alice.get_by_test_id("info-member")).to_have_count(1)

    # Bob views first, then joins from the spectator banner.
    bob.get_by_test_id("tab-new").click()
    conversation_item(bob, "new", conv_id).click()
    expect(bob.get_by_test_id("viewer-banner")).to_be_visible()
    expect(alice.get_by_test_id("chat-viewers")).to_have_attribute("data-count", "1")
    bob.get_by_test_id("viewer-join").click()
    expect(bob.get_by_test_id("composer-input")).to_be_visible()
    expect(bob.get_by_test_id("viewer-banner")).to_have_count(0)
    expect(alice.get_by_test_id("chat-viewers")).to_have_attribute("data-count", "0")
    expect(alice.get_by_test_id("chat-members")).to_have_attribute("data-count", "2")
    expect(alice.get_by_test_id("info-member")).to_have_count(2)  # joined_conversation adds him live

    send(bob, "Я с вами")
    expect(message(alice, "Я с вами")).to_be_visible()

    # Bob leaves: back to "new" for him, one member less for Alice.
    bob.get_by_test_id("chat-leave").click()
    bob.get_by_test_id("dialog-ok").click()
    expect(bob.get_by_test_id("chat-empty")).to_be_visible()
    expect(conversation_item(bob, "joined", conv_id)).to_have_count(0)
    bob.get_by_test_id("tab-new").click()
    expect(conversation_item(bob, "new", conv_id)).to_be_visible()
    expect(alice.get_by_test_id("chat-members")).to_have_attribute("data-count", "1")
    expect(alice.get_by_test_id("info-member")).to_have_count(1)

    # Creating a duplicate name shows the API's error in the dialog.
    alice.get_by_test_id("create-conversation").click()
    alice.get_by_test_id("create-name-input").fill("Книжный клуб")
    alice.get_by_test_id("dialog-ok").click()
    expect(alice.get_by_test_id("dialog-error")).not_to_be_empty()
    alice.get_by_test_id("dialog-cancel").click()

    # The last member leaving deletes it for everyone.
    alice.get_by_test_id("chat-leave").click()
    alice.get_by_test_id("dialog-ok").click()
    for page in (alice, bob):
        expect(page.locator(f'[data-testid="conversation-item"][data-id="{conv_id}"]')).to_have_count(0)


# ---------------------------------------------------------------- global chat


def test_global_chat_between_two_users(chat_server, new_page, artifacts_dir):
    base = chat_server.base_url
    alice, bob = new_page(), new_page()
    api_calls = []
    sockets = []
    signed_out = ("/v1/dev/", "/v1/features")  # asked before there is anyone to name
    alice.on("request", lambda r: api_calls.append(r)
             if "/v1/" in r.url and not any(part in r.url for part in signed_out) else None)
    alice.on("websocket", lambda ws: sockets.append(ws.url))
    sign_in(alice, base, "Алиса", 3001)
    sign_in(bob, base, "Борис", 3002)

    alice.get_by_test_id("global-chat-item").click()
    expect(alice.get_by_test_id("chat-title")).to_have_text("Анонимный чат")
    send(alice, "Всем привет, угадайте кто я")

    # Bob has not opened it: a badge, then the message with no sender data.
    expect(bob.get_by_test_id("global-unread")).to_have_attribute("data-count", "1")
    expect(bob.get_by_test_id("global-preview")).to_have_text("Всем привет, угадайте кто я")
    bob.get_by_test_id("global-chat-item").click()
    got = message(bob, "Всем привет, угадайте кто я")
    expect(got).to_have_attribute("data-mine", "false")
    expect(got.get_by_test_id("message-author")).to_have_count(0)
    expect(got).not_to_contain_text("Алиса")
    expect(bob.get_by_test_id("global-unread")).to_have_attribute("data-count", "0")

    send(bob, "Не угадаю 🙂")
    got = message(alice, "Не угадаю 🙂")
    expect(got).to_have_attribute("data-mine", "false")
    expect(got.get_by_test_id("message-author")).to_have_count(0)
    shot(alice, artifacts_dir / "global-chat.png")

    # Every API call names the user and its socket (the socket itself uses the query).
    assert any("/v1/messages/send" in r.url for r in api_calls)
    for request in api_calls:
        headers = request.all_headers()
        assert headers.get("authorization", "").startswith("VK vk_"), request.url
        assert headers.get("x-socket-id"), request.url
    assert sockets and all("/v1/ws?" in url and "sign=" in url and "name=" in url for url in sockets)

    # A reload keeps the tab's user and still tells our own messages apart.
    alice.reload()
    wait_online(alice)
    expect(alice.get_by_test_id("me-name")).to_have_text("Алиса")
    alice.get_by_test_id("global-chat-item").click()
    expect(message(alice, "Всем привет, угадайте кто я")).to_have_attribute("data-mine", "true")
    expect(message(alice, "Не угадаю 🙂")).to_have_attribute("data-mine", "false")


def test_reconnects_after_server_restart(chat_server, new_page):
    alice = new_page()
    sign_in(alice, chat_server.base_url, "Алиса", 4001)
    alice.get_by_test_id("global-chat-item").click()
    send(alice, "до перезапуска")

    chat_server.stop()
    expect(alice.get_by_test_id("connection-status")).to_have_attribute("data-state", "connecting")
    expect(alice.get_by_test_id("connection-banner")).to_be_visible()
    chat_server.start()  # same port, same data folder
    wait_online(alice, timeout=30_000)
    expect(alice.get_by_test_id("connection-banner")).to_be_hidden()

    # The refetched, resubscribed chat works again, also for others.
    bob = new_page()
    sign_in(bob, chat_server.base_url, "Борис", 4002)
    bob.get_by_test_id("global-chat-item").click()
    expect(message(bob, "до перезапуска")).to_be_visible()
    send(bob, "после перезапуска")
    expect(message(alice, "после перезапуска")).to_be_visible()


# ---------------------------------------------------------------- VK launch


def test_vk_launch_params_in_url(start_server, new_page):
    secret = "test-vk-secret-" + str(int(time.time()))
    server = start_server(CHAT_VK_SECRET=secret)
    params = {
        "vk_access_token_settings": "",
        "vk_app_id": "51234567",
        "vk_are_notifications_enabled": "0",
        "vk_is_app_user": "1",
        "vk_language": "ru",
        "vk_platform": "desktop_web",
        "vk_ts": str(int(time.time())),
        "vk_user_id": "4242",
    }
    query = urllib.parse.urlencode({**params, "sign": vk_sign(params, secret)})

    page = new_page()
    page.goto(f"{server.base_url}/?{query}")
    wait_online(page)
    expect(page.get_by_test_id("signin-screen")).to_have_count(0)
    expect(page.get_by_test_id("me-name")).to_have_text("id4242")
    expect(page.get_by_test_id("sign-out")).to_have_count(0)

    page.get_by_test_id("create-conversation").click()
    page.get_by_test_id("create-name-input").fill("Из ВКонтакте")
    page.get_by_test_id("dialog-ok").click()
    expect(page.get_by_test_id("chat-title")).to_have_text("Из ВКонтакте")
    send(page, "Работает по подписи VK")

    # Without launch parameters, and no dev sign-in on a real secret: open from VK.
    plain = new_page()
    plain.goto(server.base_url + "/")
    expect(plain.get_by_test_id("vk-required")).to_be_visible()

    # A tampered signature is refused with a message, not an endless spinner.
    bad = new_page()
    bad.goto(f"{server.base_url}/?{query.replace('vk_user_id=4242', 'vk_user_id=4243')}")
    expect(bad.get_by_test_id("auth-error")).to_be_visible(timeout=15_000)


# ---------------------------------------------------------------- small screens


def test_mobile_layout(chat_server, new_page, artifacts_dir):
    phone = new_page(viewport={"width": 390, "height": 760})
    sign_in(phone, chat_server.base_url, "Мобильный", 5001)
    sidebar, pane = phone.get_by_test_id("sidebar"), phone.get_by_test_id("chat-pane")
    expect(sidebar).to_be_visible()
    expect(pane).to_be_hidden()

    phone.get_by_test_id("global-chat-item").click()
    expect(pane).to_be_visible()
    expect(sidebar).to_be_hidden()
    send(phone, "С телефона")
    shot(phone, artifacts_dir / "mobile-chat.png")

    phone.get_by_test_id("chat-back").click()
    expect(sidebar).to_be_visible()
    expect(pane).to_be_hidden()
    expect(phone.get_by_test_id("global-preview")).to_have_text("С телефона")


def test_keepalive_ping(chat_server, new_page):
    page = new_page()
    sent, received = [], []

    def watch(ws):
        ws.on("framesent", lambda payload: sent.append(payload))
        ws.on("framereceived", lambda payload: received.append(payload))

    page.on("websocket", watch)
    page.clock.install()
    sign_in(page, chat_server.base_url, "Пингующий", 6001)
    assert not any('"ping"' in str(frame) for frame in sent)
    page.clock.fast_forward("00:26")
    page.wait_for_function("() => true")  # let the page run its timers
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any('"pong"' in str(frame) for frame in received):
        page.wait_for_timeout(100)
    assert any(frame == '{"event":"ping"}' for frame in sent), sent
    assert any('"pong"' in str(frame) for frame in received), received
    wait_online(page)


# ---------------------------------------------------------------- resume


class CuttableLink:
    """A TCP proxy in front of the server, standing for one phone's network: it can be cut and restored.

    Cutting drops every connection through it at once (no close frame, as a
    tunnel or a Wi-Fi/LTE switch does) and refuses new ones until restored.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.links += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for end in self.links:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.links.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_a_cut_network_resumes_without_refetching(chat_server, new_page):
    """Messages sent while one client's network is cut appear once, in order, without a reload or a refetch."""
    link = CuttableLink(chat_server.port)
    try:
        alice, bob = new_page(), new_page()
        sign_in(alice, f"http://127.0.0.1:{link.port}", "Алиса", 5001)
        sign_in(bob, chat_server.base_url, "Борис", 5002)
        for page in (alice, bob):
            page.get_by_test_id("global-chat-item").click()
        send(bob, "до обрыва")
        expect(message(alice, "до обрыва")).to_be_visible()
        requests: list[str] = []
        sockets: list[str] = []
        alice.on("request", lambda r: requests.append(r.url) if "/v1/" in r.url else None)
        alice.on("websocket", lambda ws: sockets.append(ws.url))

        link.cut()
        expect(alice.get_by_test_id("connection-status")).not_to_have_attribute("data-state", "online")
        missed = [f"пока не было связи {n}" for n in range(3)]
        for text in missed:
            send(bob, text)
        link.restore()
        wait_online(alice, timeout=30_000)

        for text in missed:
            expect(message(alice, text)).to_have_count(1)
        texts = [t.strip() for t in messages(alice).all_inner_texts()]
        positions = [next(i for i, shown in enumerate(texts) if text in shown) for text in ["до обрыва", *missed]]
        assert positions == sorted(positions), texts  # in the order they were sent
        assert sockets and all("resume=" in url for url in sockets)  # the reconnect asked to resume
        refetches = [url for url in requests if "/v1/messages/get" in url or "/v1/conversations/get" in url]
        assert refetches == [], refetches  # resumed: nothing fetched again
        send(bob, "после")
        expect(message(alice, "после")).to_be_visible()
    finally:
        link.close()


# ---------------------------------------------------------------- VK hides the app; a swamped server


def bridge_event(page: Page, event_type: str) -> None:
    """An event VK Bridge sends on its own; outside VK's frame the page is its own parent."""
    page.evaluate("type => window.postMessage({ type, data: {} }, '*')", event_type)


def test_hidden_by_vk_for_a_minute_closes_the_socket_and_restore_resumes(chat_server, new_page):
    alice, bob = new_page(), new_page()
    sockets = []
    alice.on("websocket", lambda ws: sockets.append(ws))
    alice.clock.install()
    sign_in(alice, chat_server.base_url, "Алиса", 7001)
    sign_in(bob, chat_server.base_url, "Борис", 7002)
    for page in (alice, bob):
        page.get_by_test_id("global-chat-item").click()
    send(bob, "до скрытия")
    expect(message(alice, "до скрытия")).to_be_visible()

    bridge_event(alice, "VKWebAppViewHide")
    alice.clock.fast_forward("00:30")  # a glance at another app keeps the socket
    alice.wait_for_timeout(200)
    assert not sockets[-1].is_closed()
    alice.clock.fast_forward("00:31")  # past a minute: closed
    deadline = time.monotonic() + 10
    while not sockets[-1].is_closed():
        assert time.monotonic() < deadline, "the socket stayed open past a minute hidden"
        alice.wait_for_timeout(100)
    alice.wait_for_timeout(1000)
    assert len(sockets) == 1  # and it stays closed while hidden: no reconnect attempts

    send(bob, "пока скрыто")
    bridge_event(alice, "VKWebAppViewRestore")
    wait_online(alice)
    assert len(sockets) == 2 and "resume=" in sockets[1].url
    expect(message(alice, "пока скрыто")).to_have_count(1)


def test_a_busy_server_is_retried_after_its_hint(start_server, new_page):
    """One handshake in progress at most: a page refused with 1013 comes back after the hint, not at once."""
    import json
    import sqlite3
    import urllib.request

    server = start_server(CHAT_MAX_HANDSHAKES="1")
    signin = urllib.request.Request(server.base_url + "/v1/dev/signin", data=json.dumps({"user_id": 7101}).encode(),
                                    headers={"Content-Type": "application/json"})
    launch = json.loads(urllib.request.urlopen(signin).read())["launch_params"]
    page = new_page()
    closes: list[tuple[float, object]] = []
    opened: list[float] = []

    def watch(ws):
        opened.append(time.monotonic())
        ws.on("close", lambda ws: closes.append((time.monotonic(), ws)))

    # The one place is taken by a handshake waiting for the database (its writes are held).
    locker = sqlite3.connect(server.data_dir / "chat.sqlite3", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    holder = socket.create_connection(("127.0.0.1", server.port))
    try:
        holder.sendall(
            f"GET /v1/ws?{launch} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .encode()
        )
        time.sleep(0.5)
        page.on("websocket", watch)
        sign_in_started = time.monotonic()
        page.goto(server.base_url + "/")
        page.get_by_test_id("signin-name").fill("Терпеливая")
        page.get_by_test_id("signin-user-id").fill("7102")
        page.get_by_test_id("signin-submit").click()
        deadline = time.monotonic() + 10
        while not closes:
            assert time.monotonic() < deadline, "the refused handshake never closed"
            page.wait_for_timeout(50)
        refused_at = closes[0][0]
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    wait_online(page, timeout=20_000)
    holder.close()
    assert len(opened) >= 2, opened
    waited = opened[1] - refused_at
    # The hint is 2 s, spread up to twice that; the ordinary first backoff is under 0.5 s.
    assert 1.8 <= waited <= 5.0, (waited, sign_in_started)
