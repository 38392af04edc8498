"""Issue 14 point 4: the per-process token cache is an LRU bounded by MAILOAUTH_CACHE_SIZE."""

from __future__ import annotations

import threading
from datetime import timedelta

from flask_mailoauth.models import utcnow
from flask_mailoauth.state import CachedToken, TokenCache

from .stored import store_account, token


def entry(name: str) -> CachedToken:
    return CachedToken(name, utcnow() + timedelta(hours=1), 0.0)


def test_the_least_recently_used_entry_goes_first():
    cache = TokenCache(2)
    cache[("a", "mailbox")] = entry("a")
    cache[("b", "mailbox")] = entry("b")
    assert cache.get(("a", "mailbox")).access_token == "a"  # a is now the most recent
    cache[("c", "mailbox")] = entry("c")
    assert cache.keys() == [("a", "mailbox"), ("c", "mailbox")]
    assert cache.get(("b", "mailbox")) is None
    cache[("a", "mailbox")] = entry("a2")  # replacing makes it the most recent too
    cache[("d", "mailbox")] = entry("d")
    assert cache.keys() == [("a", "mailbox"), ("d", "mailbox")]
    assert cache.pop(("a", "mailbox")).access_token == "a2"
    assert cache.pop(("a", "mailbox")) is None
    assert len(cache) == 1


def test_the_size_holds_under_threads():
    cache = TokenCache(50)
    barrier = threading.Barrier(8)

    def churn(n: int) -> None:
        barrier.wait()
        for i in range(2000):
            key = (f"k{(n * 7919 + i) % 300}", "mailbox")
            cache[key] = entry(key[0])
            cache.get((f"k{i % 300}", "mailbox"))
            if i % 5 == 0:
                cache.pop(key)
            assert len(cache) <= 50

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0 < len(cache) <= 50
    assert len(set(cache.keys())) == len(cache)


def test_the_extension_keeps_at_most_cache_size_tokens(make_host):
    host = make_host(MAILOAUTH_CACHE_SIZE=2)
    for key in ("one", "two", "three"):
        host.mailboxes[key] = host.mailboxes["support"]
        store_account(host, key=key, access=f"at-{key}")
        assert token(host, key=key) == f"at-{key}"
    cache = host.app.extensions["mailoauth"].cache
    assert cache.size == 2
    assert cache.keys() == [("two", "mailbox"), ("three", "mailbox")]
    assert token(host, key="one") == "at-one"  # read again from the database
    assert cache.keys() == [("three", "mailbox"), ("one", "mailbox")]
