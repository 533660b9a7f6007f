"""The editor's PipeQuant settings (web/js/settings.js) in a real ComfyUI, on both frontends: the
Settings dialog shows them, and a change is saved where the server reads it. Same set-up and
skips as test_browser.py, whose fixtures this uses."""

from __future__ import annotations

import pytest
from test_browser import comfy_server, editor, refused_link, server  # noqa: F401, F811 (fixtures)

pytestmark = pytest.mark.browser
HUB_CACHE_SETTING = "PipeQuant.HubCache"  # web/js/settings.js, read by nodes/comfy.py


def test_the_hub_cache_setting_is_in_the_settings_dialog_and_reaches_the_server(editor):  # noqa: F811
    """Settings → PipeQuant → "Read pipelines from the Hugging Face cache": registered on both
    frontends, on by default, and a change is saved where the server reads it (test_comfyui_memory.py
    checks that the model list follows)."""
    setting = "(id) => window.app.extensionManager.setting.get(id)"
    assert editor.js(setting, HUB_CACHE_SETTING) is True
    editor.js("() => window.app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
    dialog = editor.page.locator("[role=dialog]").last  # PrimeVue's on 1.27, its own on newer frontends
    dialog.wait_for(timeout=10_000)
    dialog.locator("input[type=text], input:not([type])").first.fill("Hugging Face")
    label = dialog.get_by_text("Read pipelines from the Hugging Face cache").first
    label.wait_for(timeout=10_000)
    editor.screenshot("settings-hub-cache")
    editor.page.keyboard.press("Escape")
    try:
        editor.js("(id) => window.app.extensionManager.setting.set(id, false)", HUB_CACHE_SETTING)
        assert editor.server.get(f"/settings/{HUB_CACHE_SETTING}") == (200, False)
    finally:
        editor.js("(id) => window.app.extensionManager.setting.set(id, true)", HUB_CACHE_SETTING)
    assert editor.server.get(f"/settings/{HUB_CACHE_SETTING}") == (200, True)
