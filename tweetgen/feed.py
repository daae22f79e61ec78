"""The Atom feed of approved tweets (GET /feed.atom), newest approval first.

Built with the standard library's ElementTree rather than a feed library (feedgen): an Atom
document of short text entries is a dozen fixed elements, ElementTree escapes every text it
writes, and feedgen would add lxml and python-dateutil to the dependencies for nothing more.
Entry ids are `urn:uuid:`s derived from the database's instance id and the tweet id, so they
never change (feed readers use them to tell new entries from seen ones).
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

ATOM = "http://www.w3.org/2005/Atom"
FEED_ENTRIES = 50


def entry_id(instance_id: str, tweet_id: int) -> str:
    return "urn:uuid:" + str(uuid.uuid5(uuid.UUID(instance_id), f"feed/{tweet_id}"))


def atom_feed(tweets: list[dict], instance_id: str, self_url: str, title: str = "tweetgen: approved tweets"
              ) -> bytes:
    """The feed document (UTF-8 bytes) for `tweets`, approved ones, newest approval first."""
    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed")

    def add(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        child = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        if text is not None:
            child.text = text
        return child

    add(feed, "id", "urn:uuid:" + instance_id)
    add(feed, "title", title)
    add(feed, "link", rel="self", href=self_url)
    # The feed changed when its newest entry did (or, empty, at the epoch: a fixed valid time).
    add(feed, "updated", max((t["reviewed"] for t in tweets), default="1970-01-01T00:00:00+00:00"))
    add(add(feed, "author"), "name", "tweetgen")
    add(feed, "generator", "tweetgen")
    for tweet in tweets:
        entry = add(feed, "entry")
        add(entry, "id", entry_id(instance_id, tweet["id"]))
        add(entry, "title", tweet["text"])
        add(entry, "updated", tweet["reviewed"])
        add(entry, "published", tweet["created"])
        add(entry, "content", tweet["text"], type="text")
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)
