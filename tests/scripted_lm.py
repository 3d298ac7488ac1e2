"""A scripted stub LM for generation tests (imported by the tests that need one)."""

from __future__ import annotations

import torch
from transformers import GenerationMixin, LlamaConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class ScriptedLM(PreTrainedModel, GenerationMixin):
    """Greedy-decodes `scripts[prompt tokens]` then EOS (EOS at once for any other prompt).

    Keeps the tokens it has seen in its KV cache (keys = token ids, values = 1 for real tokens, 0 for
    padding), so it works under any generation loop that drives a transformers cache, in any batch.
    `prompts` collects the prompts (real tokens) of every prefill it ran.
    """

    config_class = LlamaConfig

    def __init__(self, config: LlamaConfig, scripts: dict[tuple[int, ...], list[int]], eos_id: int):
        super().__init__(config)
        self.scripts, self.eos_id = scripts, eos_id
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.prompts: list[list[int]] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, logits_to_keep=0, **kwargs):
        cache = cache if cache is not None else past_key_values
        prefill = cache is None or cache.get_seq_length() == 0
        B, T = input_ids.shape
        real = torch.ones(B, T) if attention_mask is None else attention_mask[:, -T:].float()
        keys, values = input_ids.float().view(B, 1, T, 1), real.view(B, 1, T, 1)
        if cache is not None:
            keys, values = cache.update(keys, values, 0)
        logits = torch.zeros(B, T if not logits_to_keep else 1, self.config.vocab_size)
        for b in range(B):
            seen = [int(k) for k, v in zip(keys[b, 0, :, 0].tolist(), values[b, 0, :, 0].tolist()) if v > 0.5]
            if prefill:
                self.prompts.append(seen)
            logits[b, -1, self.next_token(seen)] = 100.0
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    def next_token(self, seen: list[int]) -> int:
        for prompt, script in self.scripts.items():
            if tuple(seen[:len(prompt)]) == prompt:
                done = len(seen) - len(prompt)
                return script[done] if done < len(script) else self.eos_id
        return self.eos_id
