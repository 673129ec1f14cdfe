"""Read models a person looks at: the lineage of a prediction, the champion's model card and the model
comparison's table and chart. Above ``ml.stages``: a stage never imports a view (it is handed one)."""
