"""Hookwire example plugin "moderator", in Python.

Refuses publications whose `data.text` contains a blocked word (case-insensitive)
and tags every other one with meta `moderated_by: "moderator-py"`.
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.lifecycle import PluginInfo
from wit_world.imports import host
from wit_world.imports.types import (
    MetaField,
    PublishDecision_Modify,
    PublishDecision_Refuse,
    PublishEdit,
    Refusal,
)

words = ["spam"]  # lower-cased blocked words, set by init


class Lifecycle(exports.Lifecycle):
    def info(self):
        # hooks=None: the broker calls every hook the component exports (on-publish).
        return PluginInfo(name="moderator", version="0.2.0", hooks=None)

    def init(self, config):
        """config: JSON text, e.g. {"words": ["spam", "scam"]}. Raising Err = init error."""
        global words
        try:
            cfg = json.loads(config)
        except ValueError as e:
            raise Err(f"config is not valid JSON: {e}")
        wanted = cfg.get("words", ["spam"]) if isinstance(cfg, dict) else ["spam"]
        if not isinstance(wanted, list) or not all(isinstance(w, str) and w for w in wanted):
            raise Err("config.words must be an array of non-empty strings")
        words = [w.lower() for w in wanted]
        host.log(host.LogLevel.INFO, f"moderator ready: {len(words)} blocked word(s)")


class OnPublish(exports.OnPublish):
    def on_publish(self, publication):
        text = text_of(publication.data())
        if text is not None:
            lower = text.lower()
            for word in words:
                if word in lower:
                    reason = f"message contains a blocked word: {word}"
                    return PublishDecision_Refuse(Refusal(reason=reason, code="blocked_word"))
        edit = PublishEdit(
            data=None,
            add_meta=[MetaField(key="moderated_by", value='"moderator-py"')],
            set_channels=None,
            add_channels=[],
            emit=[],
        )
        return PublishDecision_Modify(edit)


def text_of(payload: bytes):
    """`data.text` of a JSON payload, or None if it is not JSON or has no string `text`."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    text = data.get("text") if isinstance(data, dict) else None
    return text if isinstance(text, str) else None
