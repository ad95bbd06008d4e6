"""A real server on 127.0.0.1 against clients that try to stall it, starve it or slip past it.
Every wait is bounded; each test fails on a server without the protection it names."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from serving import TOKEN, Server, digit_png, multipart

AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_TIMEOUT_S = 2.0


HEAD_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(digits_bundle):
    running = Server(digits_bundle, "--token", TOKEN, "--max-body-mb", "0.05", "--max-in-flight", "4",
                     "--read-timeout", str(READ_TIMEOUT_S), "--head-timeout", str(HEAD_TIMEOUT_S),
                     "--no-access-log")  # fmt: skip
    yield running
    running.stop()


def _predict_ok(server) -> bool:
    status, result, _ = server.request("/v1/predict", digit_png(3)[0], AUTH)
    return status == 200 and result["top_k"][0]["label"] == "3"


def _open(server, head: str) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    connection.sendall(head.encode())
    return connection


def test_an_endless_header_line_is_cut_off_and_other_clients_are_served(server):
    """Without a header limit (httptools) the server buffers the line for as long as it comes."""
    connection = _open(server, "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
    sent, refused = 0, False
    try:
        while sent < 4_000_000:
            connection.sendall(b"a" * 8192)
            sent += 8192
    except (ConnectionResetError, BrokenPipeError):  # the server closed the connection (a timeout is not that)
        refused = True
    if not refused:
        connection.settimeout(10)
        answer = connection.recv(200)
        refused = answer == b"" or answer.startswith(b"HTTP/1.1 4")
    connection.close()
    assert refused and sent < 4_000_000, f"the server took {sent:,} bytes of one header line"
    assert _predict_ok(server)


def test_slow_uploads_get_408_and_never_lock_out_the_others(server):
    head = ("POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN +
            "\r\nContent-Length: 1000\r\n\r\n" + "x" * 10)  # fmt: skip
    slow = [_open(server, head) for _ in range(12)]  # three times --max-in-flight, each sends 10 of 1000 bytes
    time.sleep(0.3)
    assert all(_predict_ok(server) for _ in range(3))
    for connection in slow:
        connection.settimeout(READ_TIMEOUT_S + 20)
        assert connection.recv(100).startswith(b"HTTP/1.1 408"), "a body that never arrives must time out"
        connection.close()
    assert server.get("/v1/ready")[0] == 200


def test_explain_is_under_the_same_limits(server):
    status, result, _ = server.request("/v1/explain", b"\0" * 60_000, AUTH)
    assert status == 413 and "byte limit" in result["error"]["message"]
    status, _, _ = server.request("/v1/explain", digit_png(1)[0])
    assert status == 401
    never = _open(server, f"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                          "Content-Length: 500\r\n\r\n")  # fmt: skip
    never.settimeout(READ_TIMEOUT_S + 20)
    assert never.recv(100).startswith(b"HTTP/1.1 408")
    never.close()
    statuses: list[int] = []
    body, headers = multipart([("file", "digit.png", digit_png(2)[0])])

    def explain():
        statuses.append(server.request("/v1/explain", body, {**headers, **AUTH})[0])

    flood = [threading.Thread(target=explain) for _ in range(12)]
    for thread in flood:
        thread.start()
    for thread in flood:
        thread.join(60)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    assert _predict_ok(server)


def _strip_png(width: int, height: int = 1) -> bytes:
    """A width x height px image: a few kB of PNG that an unbounded resize turns into gigabytes."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_strips_cannot_harm_a_shared_batch(server):
    """A 4,000,000 x 1 px strip is refused from its header; a 20:1 panorama is answered (resized
    from its middle); a text file fails only its own entry of the batch."""
    strip, panorama = _strip_png(4_000_000), _strip_png(4_000, 200)
    assert len(strip) < 20_000
    files = [("files", "strip.png", strip), ("files", "digit.png", digit_png(4)[0]),
             ("files", "note.txt", b"just text"), ("files", "panorama.png", panorama)]  # fmt: skip
    body, headers = multipart(files)
    status, results, _ = server.request("/v1/predict/batch?top_k=2", body, {**headers, **AUTH})
    assert status == 200, results
    assert results[0]["error"]["status"] == 415 and "strip" in results[0]["error"]["message"]
    assert results[1]["top_k"][0]["label"] == "4"
    assert results[2]["error"]["status"] == 415 and "note.txt" in results[2]["error"]["message"]
    assert "label" in results[3] and len(results[3]["top_k"]) == 2


@pytest.mark.parametrize("value", ["\u00b2", "1" * 5000, "-1", "0", "1.5", ""])
def test_a_top_k_that_is_not_a_small_positive_integer_is_422(server, value):
    from urllib.parse import quote

    status, result, _ = server.request(f"/v1/predict?top_k={quote(value)}", digit_png(0)[0], AUTH)
    assert status == 422 and "top_k" in result["error"]["message"]


def test_a_foreign_host_header_is_refused_on_a_loopback_server(server):
    """A DNS-rebinding page reaches 127.0.0.1 under its own domain name, which it sends as Host."""
    connection = _open(server, "GET /v1/health HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n")
    assert connection.recv(100).startswith(b"HTTP/1.1 421")
    connection.close()
    assert server.get("/v1/health")[0] == 200  # urllib sends Host: 127.0.0.1:PORT


def test_errors_have_one_shape(server):
    for path, method, expected in (("/nowhere", "GET", 404), ("/v1/predict", "GET", 405)):
        status, result, _ = server.request(path, headers=AUTH, method=method)
        assert status == expected and result["error"]["status"] == expected and result["error"]["message"]


def test_a_utf8_token_and_a_token_file_work(digits_bundle, tmp_path):
    token = "pässwörd-🔑"
    (tmp_path / "token").write_text(token + "\n", encoding="utf-8")
    utf8 = Server(digits_bundle, "--token-file", str(tmp_path / "token"), "--no-access-log")
    try:
        header = {"Authorization": "Bearer " + token.encode("utf-8").decode("latin-1")}  # the bytes as sent
        assert utf8.request("/v1/predict", digit_png(0)[0], header)[0] == 200
        assert utf8.request("/v1/predict", digit_png(0)[0], {"Authorization": "Bearer p"})[0] == 401
    finally:
        utf8.stop()


def test_serve_refuses_a_port_out_of_range(digits_bundle, capsys):
    from imgclf.cli.main import main

    assert main(["serve", str(digits_bundle), "--port", "99999"]) == 2
    assert "--port must be 0-65535" in capsys.readouterr().err


def _read_all(connection: socket.socket, seconds: float) -> bytes | None:
    """Everything the server sends until it closes the connection; None if it is still open after
    ``seconds``."""
    connection.settimeout(seconds)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return received


def test_connections_that_send_no_request_head_are_closed(server):
    """Silent sockets and a header trickled in slowly used to be held open for ever (100 of them
    used up the server's file limit); they are closed after --head-timeout."""
    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(20)]
    trickle = _open(server, "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    for connection in [*silent, trickle]:
        assert _read_all(connection, HEAD_TIMEOUT_S + 8) == b""  # closed without an answer
        connection.close()
    assert time.monotonic() - started < HEAD_TIMEOUT_S + 8
    assert _predict_ok(server)


def test_a_request_framed_two_ways_is_refused_and_its_connection_closed(server):
    """Content-Length and Transfer-Encoding together (a request-smuggling shape): one 400, the
    connection closed, and the request hidden in the body never answered."""
    hidden = "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    head = ("POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN +
            "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden)  # fmt: skip
    answer = _read_all(_open(server, head), 10)
    assert answer is not None, "the connection was kept open"
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    assert _predict_ok(server)


def test_every_answer_carries_the_protective_headers(server):
    for path, headers in (("/v1/health", {}), ("/v1/metadata", {}), ("/v1/metadata", AUTH)):
        request = urllib.request.Request(server.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                received = response.headers
        except urllib.error.HTTPError as error:  # the refusal without a token
            received = error.headers
        assert received["X-Frame-Options"] == "DENY" and received["X-Content-Type-Options"] == "nosniff"
        assert received["Cache-Control"] == "no-store"


def test_one_client_holding_many_connections_cannot_lock_the_others_out(server):
    """A client (here 127.0.0.2) may hold 32 connections; the next is answered 503 in the JSON
    error shape and closed, and another client (127.0.0.1) is served meanwhile. The refusal is held
    a second first, so a client reopening refused sockets in a loop cannot flood the event loop."""
    from imgclf.serve.connections import REFUSAL_HOLD_S

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.2", 0))

    held = [connect() for _ in range(32)]
    try:
        refused, started = [connect() for _ in range(3)], time.monotonic()
        assert _predict_ok(server)  # served while the refusals are held
        answers = [_read_all(connection, 10) for connection in refused]
        assert time.monotonic() - started >= REFUSAL_HOLD_S - 0.05  # a timer never fires early
        for answer in answers:
            assert answer is not None and answer.startswith(b"HTTP/1.1 503"), answer
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["error"]["status"] == 503 and "32 connections" in body["error"]["message"]
        assert _predict_ok(server)
    finally:
        for connection in held:
            connection.close()


def test_refusals_are_held_only_while_file_descriptors_are_to_spare():
    from imgclf.serve.connections import ConnectionBook

    book = ConnectionBook(spare_descriptors=40)
    book.open_per_client.update({"127.0.0.2": 30, "127.0.0.3": 2})
    assert book.may_hold_refusal()
    book.held_refusals = 8  # 32 open + 8 held: half the file limit reached, the next refusal is answered at once
    assert not book.may_hold_refusal()
