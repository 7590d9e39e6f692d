"""The end-to-end toy-world demo: AoTD's experiment in miniature (see `aotd_jax.demo.run`)."""
