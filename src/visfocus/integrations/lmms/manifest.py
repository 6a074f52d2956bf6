"""What lmms-eval's entry point group ``lmms_eval.models`` loads: the model id ``visfocus`` and where its class lives
(imported only when a run asks for it)."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFESTS = [ModelManifest(model_id="visfocus", simple_class_path="visfocus.integrations.lmms.model.VisFocusLmms")]
