"""Hookwire plugin "{{name}}", in Python: refuses a publication whose `text` is longer
than `max_len` characters and tags every other one with meta `checked_by`."""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.hooks import HookSet, PluginInfo
from wit_world.imports import host
from wit_world.imports.types import (
    ConnectDecision_Accept,
    Decision_Allow,
    MetaField,
    PublishDecision_Modify,
    PublishDecision_Refuse,
    PublishEdit,
)

max_len = 500  # set by init


class Hooks(exports.Hooks):
    def info(self):
        return PluginInfo(name="{{name}}", version="0.1.0", hooks=HookSet.PUBLISH)

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

    def on_publish(self, publication):
        try:
            data = json.loads(publication.data())
        except ValueError:
            data = None
        text = data.get("text") if isinstance(data, dict) else None
        if isinstance(text, str) and len(text) > max_len:
            return PublishDecision_Refuse(f"the text is too long (over {max_len} characters)")
        edit = PublishEdit(
            data=None,
            add_meta=[MetaField(key="checked_by", value='"{{name}}"')],
            set_channels=None,
            add_channels=[],
            emit=[],
        )
        return PublishDecision_Modify(edit)

    # Not declared in info().hooks, so never called; the 0.1.0 contract requires them.
    def on_connect(self, conn):
        return ConnectDecision_Accept()

    def on_subscribe(self, conn, channel):
        return Decision_Allow()

    def on_disconnect(self, conn, reason):
        pass
