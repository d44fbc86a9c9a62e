"""The seed playbook's Phase 2 `train` flags, copied verbatim from the seed document.

Tests compare the product's recipes and CLI parsing against this independent copy, so a drift in
``playbook/phase2.py`` cannot hide behind a shared constant.
"""

# What the seed's flags leave to the defaults of its day (the flat model, classic block, dropout 0.1, AdamW,
# OneCycle). Today's defaults differ, so the seed's command line is these pins followed by its flags.
SEED_IMPLIED = "--arch flat --block classic --dropout 0.1 --optimizer adamw --lr_schedule onecycle"

SEED_FLAGS = {
    "A": "--layers 8 --d_model 256 --nhead 8 --causal true --chunk_size 128 --act true --reversible true "
         "--checkpointing true --batch_size 64 --accum_steps 2 --amp bf16 --lr_schedule progressive_plateau "
         "--full_attn_logging false",
    "B": "--layers 8 --d_model 128 --nhead 8 --causal true --chunk_size 128 --quantization int8 --qat true "
         "--reversible true --checkpointing true --batch_size 128 --accum_steps 1 --amp bf16",
    "C": "--layers 16 --d_model 256 --nhead 8 --causal true --chunk_size 128 --act true --reversible true "
         "--checkpointing true --batch_size 48 --accum_steps 3 --amp bf16 --lr_schedule progressive_plateau",
}
