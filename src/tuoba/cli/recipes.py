from __future__ import annotations

import click

from tuoba.cli import App
from tuoba.recipe import load_recipe, recipe_names


@click.command("recipes")
@click.pass_obj
def command(app: App) -> None:
    """List the recipes, one line each: name, what each stage installs, description.

    s1: Debian packages in stage 1; s2: packages built from source by LLVM against musl
    in stage 2 ("-" when the recipe has no stage-2 form). An umbrella recipe names the
    recipes it brings in.
    """
    for name in recipe_names(app.data_dir):
        recipe, _ = load_recipe(app.data_dir, name)
        s1, s2 = recipe.section(1), recipe.section(2)
        s1_text = "s1: -" if s1 is None else f"s1: {len(s1.packages)} pkgs"
        s2_text = "s2: -" if s2 is None else f"s2: {len(s2.builds)} builds"
        includes = f" (includes {', '.join(recipe.includes)})" if recipe.includes else ""
        click.echo(f"{name:<12} {s1_text:<13} {s2_text:<13} {recipe.description}{includes}")
