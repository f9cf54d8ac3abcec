# The workflow as a picture: the rule graph and the job DAG of the default target, drawn with Graphviz.
#   snakemake --cores 1 dag                   -> results/dag/rulegraph.svg, rulegraph.png, jobs.svg
#   snakemake --cores 1 docs/rulegraph.svg    -> the same three files in docs/ (the copy the README shows)
# The nested snakemake needs --nolock (this run holds the lock) and reads the same config files. --forceall draws
# every job, so the picture does not depend on what has already been built. Not part of `all`.


rule dag:
    """Target: the pictures under results/dag."""
    input:
        "results/dag/rulegraph.svg",
        "results/dag/rulegraph.png",
        "results/dag/jobs.svg",


rule draw_dag:
    """Render `snakemake --rulegraph` and `snakemake --dag` of results/summary.csv with dot (SVG and PNG)."""
    input:
        snakefile="Snakefile",
        rules=sorted(p.as_posix() for p in Path("rules").glob("*.smk")),
        config=CONFIG_FILES,
    output:
        rulegraph_svg="{dagdir}/rulegraph.svg",
        rulegraph_png="{dagdir}/rulegraph.png",
        jobs_svg="{dagdir}/jobs.svg",
    log:
        "results/logs/dag/{dagdir}.log",
    benchmark:
        "results/benchmarks/dag/{dagdir}.tsv"
    wildcard_constraints:
        dagdir="results/dag|docs",
    conda:
        "../envs/kdsum.yaml"
    shell:
        "tmp=$(mktemp -d) && trap 'rm -rf $tmp' EXIT && "
        "python -m snakemake results/summary.csv --nolock --rulegraph dot --configfile {input.config:q} "
        "> $tmp/rulegraph.dot 2> {log:q} && "
        "python -m snakemake results/summary.csv --nolock --forceall --dag dot --configfile {input.config:q} "
        "> $tmp/jobs.dot 2>> {log:q} && "
        "dot -Tsvg $tmp/rulegraph.dot -o {output.rulegraph_svg:q} 2>> {log:q} && "
        "dot -Tpng -Gdpi=96 $tmp/rulegraph.dot -o {output.rulegraph_png:q} 2>> {log:q} && "
        "dot -Tsvg $tmp/jobs.dot -o {output.jobs_svg:q} 2>> {log:q}"
