"""ETL pipeline for the results portal of the CEC of the Kyrgyz Republic."""
