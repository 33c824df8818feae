from spectramind.cli import main

main()
