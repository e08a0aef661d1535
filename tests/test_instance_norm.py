import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from minet_jax import global_stats
from minet_jax.instance_norm import instance_norm_relu


def _reference(x, scale, bias, eps=1e-5):
    """The op as the model wrote it before: relu of flax's InstanceNorm, differentiated by JAX."""
    mean = jnp.mean(x, (1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), (1, 2), keepdims=True)
    return jax.nn.relu((x - mean) * (jax.lax.rsqrt(var + eps) * scale) + bias)


def _inputs(dtype, shape=(2, 5, 6, 4)):
    kx, ks, kb = jax.random.split(jax.random.key(0), 3)
    x = 3.0 * jax.random.normal(kx, shape, dtype) + 1.5
    return x, jax.random.normal(ks, shape[-1:], dtype), 0.5 * jax.random.normal(kb, shape[-1:], dtype)


def test_values_equal_flax_instance_norm_then_relu():
    x, scale, bias = _inputs(jnp.float32, (2, 9, 7, 8))
    norm = global_stats.InstanceNorm(8, epsilon=1e-5, use_fast_variance=False, dtype=jnp.float32, rngs=nnx.Rngs(0))
    norm.scale[...], norm.bias[...] = scale, bias
    want = jax.nn.relu(nnx.InstanceNorm.__call__(norm, x))
    np.testing.assert_array_equal(np.asarray(norm.relu(x)), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(instance_norm_relu(x, scale, bias, 1e-5)), np.asarray(want))


@pytest.mark.parametrize("modes", [["fwd"], ["rev"]])
def test_derivatives_against_finite_differences_in_float64(modes):
    with jax.enable_x64(True):
        x, scale, bias = _inputs(jnp.float64)
        f = lambda x, s, b: instance_norm_relu(x, s, b, 1e-5)  # noqa: E731
        check_grads(f, (x, scale, bias), order=1, modes=modes, atol=1e-6, rtol=1e-6)
        check_grads(f, (x, scale, bias), order=2, modes=modes, atol=1e-5, rtol=1e-5)


def test_gradient_equals_autodiff_of_the_plain_op_in_float32():
    x, scale, bias = _inputs(jnp.float32, (2, 16, 16, 8))
    ct = jax.random.normal(jax.random.key(3), x.shape)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * ct)  # noqa: E731
    got = jax.grad(loss(lambda x, s, b: instance_norm_relu(x, s, b, 1e-5)), (0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(_reference), (0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want, strict=True):
        # Both sum ~H*W terms of O(|ct| |scale| / std) in float32; the bound scales with that size.
        tol = 64 * np.finfo(np.float32).eps * 16 * 16 * float(jnp.max(jnp.abs(w)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=tol)


def test_linearising_saves_one_float_map_and_a_mask():
    x, scale, bias = _inputs(jnp.float32, (2, 8, 8, 4))

    def residual_kinds(f):
        _, f_vjp = jax.vjp(f, x)
        leaves = [r for r in jax.tree.leaves(f_vjp) if hasattr(r, "shape") and r.shape == x.shape]
        return sorted(str(r.dtype) for r in leaves)

    lean = residual_kinds(lambda x: instance_norm_relu(x, scale, bias, 1e-5))
    plain = residual_kinds(lambda x: _reference(x, scale, bias))
    assert lean == ["bool", "float32"], lean
    assert plain.count("float32") > lean.count("float32"), plain


def test_bfloat16_input_computes_in_float32():
    x, scale, bias = _inputs(jnp.float32, (1, 6, 6, 3))
    y = instance_norm_relu(x.astype(jnp.bfloat16), scale, bias, 1e-5)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(_reference(x.astype(jnp.bfloat16).astype(jnp.float32), scale, bias)), rtol=1e-6, atol=1e-6)
