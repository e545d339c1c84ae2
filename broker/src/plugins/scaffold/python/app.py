"""Hookwire plugin "{{name}}", in Python: refuses a publication whose `text` is longer
than `max_len` characters and tags every other one with meta `checked_by`."""
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

max_len = 500  # set by init


class Lifecycle(exports.Lifecycle):
    def info(self):
        # hooks=None: the broker calls every hook the world exports (wit/world.wit).
        return PluginInfo(name="{{name}}", version="0.1.0", hooks=None)

    def init(self, config):
        """config: JSON text, e.g. {"max_len": 500}. Raising Err fails the load."""
        global max_len
        try:
            cfg = json.loads(config or "{}")
        except ValueError as e:
            raise Err(f"config is not valid JSON: {e}")
        wanted = cfg.get("max_len", 500) if isinstance(cfg, dict) else 500
        if not isinstance(wanted, int) or wanted < 0:
            raise Err("config.max_len must be a number of characters")
        max_len = wanted
        host.log(host.LogLevel.INFO, f"{{name}} ready: max_len {max_len}")


class OnPublish(exports.OnPublish):
    def on_publish(self, publication):
        try:
            data = json.loads(publication.data())
        except ValueError:
            data = None
        text = data.get("text") if isinstance(data, dict) else None
        if isinstance(text, str) and len(text) > max_len:
            reason = f"the text is too long (over {max_len} characters)"
            return PublishDecision_Refuse(Refusal(reason=reason, code="too_long"))
        edit = PublishEdit(
            data=None,
            add_meta=[MetaField(key="checked_by", value='"{{name}}"')],
            set_channels=None,
            add_channels=[],
            emit=[],
        )
        return PublishDecision_Modify(edit)
