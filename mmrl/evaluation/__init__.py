"""Evaluation of frozen encoders, in rooms (docs/evaluation.md), top to bottom:

  runner.py     the orchestration: `EvalRunner` builds the evaluators that config.eval enables
                and runs each on its schedule; `evaluate_checkpoint` for a saved run.
  downstream/   the downstream benchmark (tasks, label fractions x seeds, results, leaderboard).
  features.py   frozen-encoder features of a split (one jitted, mesh-sharded forward pass) and
                restoring a checkpoint for evaluation.
  evaluators/   one evaluator per task: retrieval, zero-shot, linear probe (+ fine-tune),
                segmentation (linear and dense heads), detection, grounding, localisation.
  maps/         sentence maps read from a frozen state (each method's own alignment map and
                BioViL's similarity map) and the sentences they are scored for.
  metrics/      pure metric math (numpy): AUROC, detection mAP/FROC, pointing game and IoU,
                CNR/mIoU, paired statistics over seeds.
  prompts/      data: the shipped zero-shot prompt sets (package data).
Pictures of an evaluation (heat maps, retrieval and segmentation sheets) are in mmrl/viz.
"""
