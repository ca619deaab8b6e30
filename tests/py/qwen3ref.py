# qwen3ref.py: a float64 PyTorch reference of Qwen3ForCausalLM (the dense
# models), written from transformers' modeling_qwen3.py (>= 4.51), which the
# tests' transformers 4.40 predates: Qwen2 without q/k/v biases
# (attention_bias), an RMSNorm over each head of q and of k (q_norm, k_norm,
# weights of head_dim) after the projections and before RoPE, head_dim from
# the config (default 128), and a sliding window (keys j with i - j <
# sliding_window) only with use_sliding_window, on the layers from
# max_window_layers on (or those layer_types names "sliding_attention").
# (transformers 4.51-4.55 slide every layer in their eager and sdpa masks
# once use_sliding_window is on; later versions, and this reference, only
# the layers from max_window_layers on.)
# Importing it registers "qwen3" with transformers' Auto classes, so
# AutoModelForCausalLM.from_pretrained loads a Qwen3 directory by the real
# tensor names and PEFT wraps it as it wraps the other architectures.
import torch
import transformers
from torch import nn
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast


class Qwen3Config(transformers.PretrainedConfig):
    model_type = "qwen3"

    def __init__(self, vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, head_dim=128, hidden_act="silu",
                 max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0,
                 rope_scaling=None, attention_bias=False, use_sliding_window=False, sliding_window=4096,
                 max_window_layers=28, layer_types=None, attention_dropout=0.0, **kw):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.head_dim, self.hidden_act = head_dim, hidden_act
        self.max_position_embeddings, self.rms_norm_eps = max_position_embeddings, rms_norm_eps
        self.rope_theta, self.rope_scaling, self.attention_bias = rope_theta, rope_scaling, attention_bias
        self.use_sliding_window, self.max_window_layers = use_sliding_window, max_window_layers
        self.sliding_window = sliding_window if use_sliding_window else None
        if layer_types is None:
            layer_types = ["sliding_attention" if self.sliding_window is not None and i >= max_window_layers
                           else "full_attention" for i in range(num_hidden_layers)]
        self.layer_types, self.attention_dropout = layer_types, attention_dropout
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kw)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):  # over the last dimension, in the input's precision (float64 here)
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.nh, self.kvh, self.hs = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        b = c.attention_bias
        self.q_proj = nn.Linear(c.hidden_size, self.nh * self.hs, bias=b)
        self.k_proj = nn.Linear(c.hidden_size, self.kvh * self.hs, bias=b)
        self.v_proj = nn.Linear(c.hidden_size, self.kvh * self.hs, bias=b)
        self.o_proj = nn.Linear(self.nh * self.hs, c.hidden_size, bias=b)
        self.q_norm = RMSNorm(self.hs, c.rms_norm_eps)
        self.k_norm = RMSNorm(self.hs, c.rms_norm_eps)
        self.window = c.sliding_window if c.layer_types[layer_idx] == "sliding_attention" else None

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.nh, self.hs)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.kvh, self.hs)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.hs).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        g = self.nh // self.kvh
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        s = q @ k.transpose(2, 3) * self.hs**-0.5
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        allowed = j <= i
        if self.window is not None:
            allowed = allowed & (i - j < self.window)
        s = s.masked_fill(~allowed, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.hs))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.self_attn = Attention(c, layer_idx)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3PreTrainedModel(transformers.PreTrainedModel):
    config_class = Qwen3Config
    base_model_prefix = "model"

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint


class Qwen3Model(Qwen3PreTrainedModel):
    def __init__(self, c):
        super().__init__(c)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([Layer(c, l) for l in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, input_ids):
        c = self.config
        T = input_ids.shape[1]
        # RoPE angles as transformers computes them: float32 inv_freq and positions
        inv = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim))
        f = torch.arange(T).float()[:, None] * inv[None, :]
        emb = torch.cat((f, f), dim=-1)
        dt = self.embed_tokens.weight.dtype
        cos, sin = emb.cos().to(dt), emb.sin().to(dt)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


class Qwen3ForCausalLM(Qwen3PreTrainedModel, GenerationMixin):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, c):
        super().__init__(c)
        if c.rope_scaling:
            raise ValueError("qwen3ref: rope_scaling is not implemented")
        self.model = Qwen3Model(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, v):
        self.model.embed_tokens = v

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, v):
        self.lm_head = v

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, inputs_embeds=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kw):
        # no cache: every call runs the whole sequence (attention_mask must be all ones)
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("qwen3ref: padding is not implemented")
        return CausalLMOutputWithPast(logits=self.lm_head(self.model(input_ids)))

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}


if "qwen3" not in transformers.AutoConfig.for_model.__globals__["CONFIG_MAPPING"]:  # a transformers < 4.51
    transformers.AutoConfig.register("qwen3", Qwen3Config)
    transformers.AutoModelForCausalLM.register(Qwen3Config, Qwen3ForCausalLM)
