"""The batch contract between the Grain pipeline and the model/trainer (fixed shapes, masks).

A batch is a dict of numpy arrays (per process: B = global_batch // process_count):

  image              f32[B, H, W, 1]  normalised ((x - mean) / std), H = W = data.image_size
  input_ids          i32[B, L]        [CLS] sentence tokens ... [SEP] [PAD]...; L % 64 == 0
  attention_mask     i32[B, L]        1 for real tokens (incl. [CLS]/[SEP]), 0 for padding
  token_to_sentence  i32[B, L]        sentence index 0..S-1 of each token; -1 special/padding
  token_to_word      i32[B, L]        word index of each word-piece;        -1 special/padding
  sentence_mask      bool[B, S]       True for sentences present (S = data.max_sentences)
  n_sentences        i32[B]
  labels             f32[B, K]        1 / 0 / -1 (uncertain); 0 where blank (see label_mask)
  label_mask         bool[B, K]       False where the label was blank
  study_id           i32[B]           stable 31-bit hash of the study id (false-negative masks)
  patient_id         i32[B]           stable 31-bit hash of the patient id
  boxes              f32[B, NB, 4]    normalised (xmin, ymin, xmax, ymax) in the output image
  box_labels         i32[B, NB]       index into the label vocabulary, -1 unknown/padding
  box_mask           bool[B, NB]      True for real boxes (NB = data.max_boxes)
  valid              bool[B]          False for padding examples (evaluation's last batch)

Optional evaluation keys (only from `pipeline.make_eval_batches(..., with_masks=True)`; training
batches never carry them):

  masks              f32[B, M, H, W]  0/1 segmentation masks in the output image's frame (the
                                      record's masks/encoded PNGs through the evaluation view)
  mask_labels        i32[B, M]        index of each mask's masks/label in the label vocabulary;
                                      -1 when the name is not in it (e.g. 'Lungs') or padding
  mask_present       bool[B, M]       True for real masks (M = max_masks; extra masks dropped)

Padding never enters a loss: every consumer masks with attention_mask / sentence_mask / valid.
"""
from __future__ import annotations

BATCH_KEYS = (
    "image", "input_ids", "attention_mask", "token_to_sentence", "token_to_word",
    "sentence_mask", "n_sentences", "labels", "label_mask", "study_id", "patient_id",
    "boxes", "box_labels", "box_mask", "valid",
)

# Optional evaluation-only keys (make_eval_batches(with_masks=True)).
MASK_KEYS = ("masks", "mask_labels", "mask_present")

# Keys the model consumes; the rest are for evaluation and bookkeeping.
MODEL_KEYS = ("image", "input_ids", "attention_mask", "token_to_sentence", "sentence_mask")

TOKEN_MULTIPLE = 64
