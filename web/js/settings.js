// PipeQuant's settings in ComfyUI's Settings dialog. ComfyUI stores them in the user's
// comfy.settings.json, where the server reads them (nodes/comfy.py).
import { app } from "../../../scripts/app.js";

const HUB_CACHE = "PipeQuant.HubCache"; // nodes/comfy.py HUB_CACHE_SETTING

app.registerExtension({
  name: "pipequant.settings",
  settings: [
    {
      id: HUB_CACHE,
      category: ["PipeQuant", "Models", "Hugging Face cache"],
      name: "Read pipelines from the Hugging Face cache",
      tooltip: "List the diffusers pipelines already in the Hugging Face hub cache (~/.cache/huggingface/hub, "
        + "or HF_HUB_CACHE) on the Load node, by repo name, read-only. Off: only ComfyUI's diffusers folders. "
        + "PIPEQUANT_HF_CACHE=off on the server turns it off too.",
      type: "boolean",
      defaultValue: true,
      // The model lists come from the server: ask for them again, so the change shows at once.
      onChange: (value, old) => {
        if (old !== undefined && value !== old) app.refreshComboInNodes?.();
      },
    },
  ],
});
