from kdsum.cli import main

main()
