from ondeck_operator.cli import main

main()
