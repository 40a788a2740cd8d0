"""Pure-JAX transformer forward passes with named hook points, for harvesting activations and
splicing SAEs back in.

Every model's forward takes ``hook``, a function (layer, site, x) -> x' called at each hook point
(it may read x or return a replacement; None leaves the model unchanged), and ``capture``, the
(layer, site) points whose values to return. Sites (`SITES`):

- ``"attn_out"``: the attention block's output, before it is added to the residual stream;
- ``"mlp_out"``: the MLP block's output, before it is added;
- ``"resid_post"``: the residual stream after the block (for post-LN BERT: after its LayerNorm).

    hidden, captured = bert.forward(params, config, ids, mask, capture=[(3, "resid_post")])
    acts = captured[(3, "resid_post")]                      # [B, T, d_model]
    spliced, _ = bert.forward(params, config, ids, mask, hook=splice(sae, params_sae, 3, "resid_post"))
"""

SITES = ("attn_out", "mlp_out", "resid_post")
